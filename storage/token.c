/*
 * token.c - the parts of bearer tokens that need no database: making a
 * secret, hashing it, and the scope names.  store.c keeps the rows.
 *
 * A secret is "slimd_" and 64 lowercase hex digits of getrandom(): 256
 * bits from the kernel's CSPRNG, never from rand() or the clock.  The
 * prefix lets people (and secret scanners) recognise a leaked token.
 * Hex, not base64: it survives shells, URLs and config files unquoted.
 *
 * The stored form is SHA-256 of the whole secret, through OpenSSL's EVP
 * like blob.c's hashes.  A token is found by its hash (a UNIQUE column),
 * so there is no secret to compare in C and no timing to measure; a slow
 * password hash (bcrypt, argon2) was rejected: it protects guessable
 * passwords, and these are random, while every request pays the hash.
 *
 * Scopes are bits (store.h): names here, in one table, so the CLI, the
 * API and the messages agree.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <openssl/evp.h>
#include "storage/store.h"

static const struct {
    const char *name;
    unsigned bit;
} scope_names[] = {
    {"read", STORE_SCOPE_READ},
    {"submit", STORE_SCOPE_SUBMIT},
    {"admin", STORE_SCOPE_ADMIN},
};
#define N_SCOPES (sizeof scope_names / sizeof scope_names[0])

int store_scopes_parse(const char *list, unsigned *scopes, struct slim_error *err)
{
    const char *p = list;
    unsigned bits = 0;
    *scopes = 0;
    if (!list || !*list)
        return slim_error_set(err, SLIM_EINVAL, "scope: expected a list such as read,submit "
                              "(scopes: read, submit, admin)");
    for (;;) {
        size_t n = strcspn(p, ",");
        size_t i = 0;
        while (i < N_SCOPES && (strlen(scope_names[i].name) != n ||
                                strncmp(scope_names[i].name, p, n)))
            i++;
        if (i == N_SCOPES)
            return slim_error_set(err, SLIM_EINVAL, "scope: '%.*s' is not one of read, submit, "
                                  "admin", (int)(n > 40 ? 40 : n), p);
        bits |= scope_names[i].bit;
        if (!p[n])
            break;
        p += n + 1;
    }
    *scopes = bits;
    return 0;
}

void store_scopes_format(unsigned scopes, char *buf, size_t len)
{
    size_t used = 0;
    if (!len)
        return;
    buf[0] = 0;
    for (size_t i = 0; i < N_SCOPES; i++) {
        if (!(scopes & scope_names[i].bit))
            continue;
        int n = snprintf(buf + used, len - used, "%s%s", used ? "," : "", scope_names[i].name);
        if (n < 0 || (size_t)n >= len - used)
            return;
        used += (size_t)n;
    }
}

int store_token_secret_new(char secret[STORE_TOKEN_LEN + 1], struct slim_error *err)
{
    unsigned char r[32];
    size_t got = 0, pre = strlen(STORE_TOKEN_PREFIX);
    while (got < sizeof r) {
        ssize_t n = getrandom(r + got, sizeof r - got, 0);
        if (n < 0 && errno != EINTR)
            return slim_error_set(err, SLIM_EIO, "getrandom: %s", strerror(errno));
        if (n > 0)
            got += (size_t)n;
    }
    memcpy(secret, STORE_TOKEN_PREFIX, pre);
    store_hex(r, sizeof r, secret + pre);
    explicit_bzero(r, sizeof r);
    return 0;
}

int store_token_hash(const char *secret, char hash[65], struct slim_error *err)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!EVP_Digest(secret, strlen(secret), md, &n, EVP_sha256(), NULL) || n != 32)
        return slim_error_set(err, SLIM_EINTERNAL, "sha256: digest failed");
    store_hex(md, 32, hash);
    return 0;
}
