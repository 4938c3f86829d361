/*
 * fuzz_http.c - libFuzzer target for the request text slimd parses
 * itself (api/http_parse.c): the Range header, URL and query unescaping,
 * route patterns, the upload's ?name=, ?limit=/?offset= integers, and
 * what auth.c's gates read: the Host header's name, the Content-Type's
 * form media types, the bearer token.
 * libmicrohttpd splits the request line, headers, query string and
 * multipart bodies; what it hands over is parsed by these functions,
 * which the target calls exactly as server.c does.
 *
 * Input: 8 bytes of a file size (little-endian; the Range is parsed
 * against it), then the text, used as the Range header, a URL, a name,
 * a query value, a Host, a Content-Type and an Authorization header in
 * turn.  The target checks each function's
 * contract (http_parse.h): a satisfiable range lies inside the file and
 * is not empty; unescaping never lengthens the text or lets a NUL in; a
 * route's {id} is one non-empty segment that fits its buffer; a valid
 * name is 1 to 200 bytes of UTF-8 without control characters; a parsed
 * integer is within its bounds; a Host's name is lower case, not empty
 * and without its port; a bearer token comes from "Bearer" and a blank.
 */
#include <strings.h>
#include <jansson.h>
#include "tests/fuzz/fuzz.h"
#include "api/http_parse.h"

/* The route patterns of server.c's table (test data: what the server
 * matches against). */
static const char *const patterns[] = {
    "/v1/health", "/v1/models", "/v1/models/{id}", "/v1/models/{id}/file",
    "/v1/datasets", "/v1/datasets/{id}", "/v1/datasets/{id}/file", "/v1/jobs",
    "/v1/jobs/{id}", "/v1/jobs/{id}/cancel", "/v1/jobs/{id}/report",
    "/v1/jobs/{id}/report.html", "/v1/jobs/{id}/artifact", "/metrics", "/",
};

static void check_range(const char *text, uint64_t size)
{
    uint64_t start = UINT64_MAX, len = UINT64_MAX;
    int r = api_parse_range(text, size, &start, &len);
    FUZZ_ASSERT(r >= -1 && r <= 1, "api_parse_range returned %d", r);
    if (r == 1) {
        FUZZ_ASSERT(len >= 1 && start < size && len <= size - start,
                    "range [%llu, +%llu) of a %llu-byte file", (unsigned long long)start,
                    (unsigned long long)len, (unsigned long long)size);
    } else {
        FUZZ_ASSERT(start == UINT64_MAX && len == UINT64_MAX, "outputs written on %d", r);
        if (r == -1)
            FUZZ_ASSERT(!strncmp(text, "bytes=", 6), "416 for a header that is no range");
    }
}

static void check_url(const char *text, size_t n)
{
    char *u = malloc(n + 1), id[128];
    size_t len;
    FUZZ_ASSERT(u != NULL, "malloc");
    memcpy(u, text, n + 1);
    len = api_unescape(u);
    FUZZ_ASSERT(len <= n && strlen(u) == len, "unescape: %zu -> %zu (strlen %zu)", n, len,
                strlen(u));
    for (size_t i = 0; i < sizeof patterns / sizeof patterns[0]; i++) {
        memset(id, 'x', sizeof id);
        if (api_route_match(patterns[i], u, id, sizeof id) && strstr(patterns[i], "{id}")) {
            size_t il = strnlen(id, sizeof id);
            FUZZ_ASSERT(il > 0 && il < sizeof id && !strchr(id, '/'),
                        "route %s matched with id of %zu bytes", patterns[i], il);
        }
    }
    free(u);
}

static void check_name(const char *text, size_t n)
{
    if (api_valid_name(text)) {
        json_t *s = json_string(text);
        FUZZ_ASSERT(n >= 1 && n <= 200 && s != NULL, "valid name of %zu bytes", n);
        for (size_t i = 0; i < n; i++)
            FUZZ_ASSERT((unsigned char)text[i] >= 0x20 && text[i] != 0x7f,
                        "control character %02x in a valid name", (unsigned char)text[i]);
        json_decref(s);
    }
}

static void check_host(const char *text)
{
    char name[256];
    memset(name, 'x', sizeof name);
    if (api_parse_host(text, name, sizeof name) == 0) {
        size_t n = strnlen(name, sizeof name);
        FUZZ_ASSERT(n > 0 && n < sizeof name, "host name of %zu bytes", n);
        for (size_t i = 0; i < n; i++)
            FUZZ_ASSERT(name[i] < 'A' || name[i] > 'Z', "upper case in host name '%s'", name);
        FUZZ_ASSERT(text[0] == '[' || !strchr(name, ':'), "a port left in '%s'", name);
    }
}

static void check_headers(const char *text)
{
    const char *tok = api_parse_bearer(text);
    int form = api_is_form_type(text);
    FUZZ_ASSERT(form == 0 || form == 1, "api_is_form_type returned %d", form);
    if (tok) {
        FUZZ_ASSERT(tok >= text + 7 && tok <= text + strlen(text), "token outside the header");
        FUZZ_ASSERT(!strncasecmp(text, "bearer", 6) && (text[6] == ' ' || text[6] == '\t'),
                    "a token from '%.20s'", text);
        FUZZ_ASSERT(*tok != ' ' && *tok != '\t', "the token starts with a blank");
    }
}

static void check_long(const char *text)
{
    long v = -7;
    if (api_parse_long(text, 1, 1000, &v) == 0)
        FUZZ_ASSERT(v >= 1 && v <= 1000, "limit %ld", v);
    else
        FUZZ_ASSERT(v == -7, "output written on failure");
    if (api_parse_long(text, 0, 1000000000, &v) == 0)
        FUZZ_ASSERT(v >= 0 && v <= 1000000000, "offset %ld", v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t fsize = 0;
    char *text;
    size_t n;

    if (size < 8)
        return 0;
    memcpy(&fsize, data, 8);
    /* small sizes are the interesting ones; keep some huge ones too */
    if (!(fsize >> 63))
        fsize &= 0xffff;
    data += 8;
    size -= 8;
    /* headers and query values are NUL-terminated strings: stop at the
     * first NUL as libmicrohttpd's would */
    n = strnlen((const char *)data, size);
    text = malloc(n + 1);
    if (!text)
        return 0;
    memcpy(text, data, n);
    text[n] = 0;
    check_range(text, fsize);
    check_url(text, n);
    check_name(text, n);
    check_long(text);
    check_host(text);
    check_headers(text);
    free(text);
    return 0;
}
