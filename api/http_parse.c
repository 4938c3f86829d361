/*
 * http_parse.c - the request text slimd parses itself (http_parse.h):
 * Range, unescaping, route patterns, names, query integers, and for
 * auth.c's gates the Host header's name, form media types and the
 * bearer token.
 *
 * libmicrohttpd parses the request line, the headers and multipart
 * bodies; what it hands over as strings is parsed here.  These functions
 * were static helpers of server.c; they live apart so that the fuzz
 * target links the very code the server runs instead of a copy, and so
 * that each has a contract written down.  Every input is a client's:
 * nothing here trusts a length or a number it has not bounded, and
 * nothing allocates.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <jansson.h>
#include "api/http_parse.h"

int api_parse_range(const char *h, uint64_t size, uint64_t *start, uint64_t *len)
{
    unsigned long long a, b;
    char *end;
    if (!h || strncmp(h, "bytes=", 6) || strchr(h, ','))
        return 0;
    h += 6;
    /* digits only: strtoull would also take a sign or spaces, and
     * "bytes=0--1" would become the whole file as a 206 */
    for (const char *c = h; *c; c++)
        if (*c != '-' && (*c < '0' || *c > '9'))
            return 0;
    if (strchr(h, '-') != strrchr(h, '-'))
        return 0;
    if (*h == '-') {
        errno = 0;
        b = strtoull(h + 1, &end, 10);
        if (errno || *end || end == h + 1)
            return 0;
        if (b == 0 || size == 0)
            return -1;
        if (b > size)
            b = size;
        *start = size - b;
        *len = b;
        return 1;
    }
    errno = 0;
    a = strtoull(h, &end, 10);
    if (errno || end == h || *end != '-')
        return 0;
    h = end + 1;
    if (*h) {
        b = strtoull(h, &end, 10);
        if (*end || b < a)
            return 0;
    } else {
        b = size ? size - 1 : 0;
    }
    if (a >= size)
        return -1;
    if (b >= size)
        b = size - 1;
    *start = a;
    *len = b - a + 1;
    return 1;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                          : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

size_t api_unescape(char *s)
{
    char *w = s;
    const char *r = s;
    while (*r) {
        int hi = r[0] == '%' ? hexval(r[1]) : -1, lo = hi >= 0 ? hexval(r[2]) : -1;
        if (lo >= 0 && (hi | lo)) {
            *w++ = (char)(hi * 16 + lo);
            r += 3;
        } else {
            *w++ = *r++;
        }
    }
    *w = 0;
    return (size_t)(w - s);
}

int api_route_match(const char *pattern, const char *url, char *id, size_t idlen)
{
    const char *p = pattern, *u = url;
    while (*p && *u) {
        if (!strncmp(p, "{id}", 4)) {
            size_t n = strcspn(u, "/");
            if (n == 0 || n >= idlen)
                return 0;
            memcpy(id, u, n);
            id[n] = 0;
            u += n;
            p += 4;
            continue;
        }
        if (*p != *u)
            return 0;
        p++;
        u++;
    }
    return !*p && !*u;
}

/* Checked before the blob is committed, so that a bad name stores
 * nothing. */
int api_valid_name(const char *name)
{
    size_t n = strlen(name);
    json_t *utf8;
    if (n == 0 || n > 200)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
            return 0;
    utf8 = json_string(name);   /* NULL unless valid UTF-8 */
    json_decref(utf8);
    return utf8 != NULL;
}

int api_parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    long v;
    if (!*s)
        return -1;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

int api_parse_host(const char *h, char *name, size_t len)
{
    size_t n;
    const char *end;
    if (h[0] == '[') {
        end = strchr(h, ']');
        if (!end || (end[1] && (end[1] != ':' || strspn(end + 2, "0123456789") != strlen(end + 2))))
            return -1;
        h++;
    } else {
        end = strchr(h, ':');
        if (end && strspn(end + 1, "0123456789") != strlen(end + 1))
            return -1;
        if (!end)
            end = h + strlen(h);
    }
    n = (size_t)(end - h);
    if (n == 0 || n >= len)
        return -1;
    for (size_t i = 0; i < n; i++)
        name[i] = (char)tolower((unsigned char)h[i]);
    if (name[n - 1] == '.')   /* "localhost." is "localhost" */
        n--;
    name[n] = 0;
    return n ? 0 : -1;
}

int api_is_form_type(const char *ct)
{
    static const char *const types[] = {"application/x-www-form-urlencoded",
                                        "multipart/form-data", "text/plain", NULL};
    size_t n;
    if (!ct)
        return 0;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    n = strcspn(ct, "; \t");
    for (int i = 0; types[i]; i++)
        if (strlen(types[i]) == n && !strncasecmp(ct, types[i], n))
            return 1;
    return 0;
}

const char *api_parse_bearer(const char *a)
{
    if (!a || strncasecmp(a, "Bearer", 6) || (a[6] != ' ' && a[6] != '\t'))
        return NULL;
    a += 6;
    while (*a == ' ' || *a == '\t')
        a++;
    return a;
}
