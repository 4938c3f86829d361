/*
 * http_parse.h - the parts of an HTTP request that slimd parses itself
 * rather than leaving to libmicrohttpd: the Range header, URL and query
 * unescaping, route patterns, display names, integers in query
 * strings, and what auth.c's gates read: the Host header's name, form
 * media types, the bearer token.  Pure functions over strings: no libmicrohttpd, no I/O, no
 * global state, so the libFuzzer target (tests/fuzz/fuzz_http.c) calls
 * exactly what the server calls.  Internal to api/.
 */
#ifndef SLIM_API_HTTP_PARSE_H
#define SLIM_API_HTTP_PARSE_H

#include <stddef.h>
#include <stdint.h>

/* Parses a single "bytes=a-b", "bytes=a-" or "bytes=-n" range against a
 * file of size bytes.  Returns 1 with *start and *len set (len >= 1,
 * start + len <= size) for a satisfiable range, 0 when h is NULL or not
 * a single range of digits (the header is then ignored: the whole file,
 * 200), and -1 when the range is well formed but lies outside the file
 * (416). */
int api_parse_range(const char *h, uint64_t size, uint64_t *start, uint64_t *len);

/* Decodes %XX escapes in s in place (libmicrohttpd's unescaping, used
 * for the path and every query value), except that %00 stays as the
 * three characters it is: decoded, a NUL would cut the string short and
 * "/v1/health%00x" would be served as "/v1/health".  Returns the new
 * length, never more than the old one. */
size_t api_unescape(char *s);

/* 1 if url matches pattern ("/v1/models/{id}/file"), where {id} stands
 * for one non-empty path segment of fewer than idlen bytes, which is
 * copied into id (NUL-terminated); else 0 (id may have been written). */
int api_route_match(const char *pattern, const char *url, char *id, size_t idlen);

/* 1 when name is a display name: 1 to 200 bytes of valid UTF-8 with no
 * control characters (it is echoed in JSON and in Content-Disposition). */
int api_valid_name(const char *name);

/* Parses s as a whole decimal integer in [min, max] into *out: 0, or -1
 * for an empty string, trailing characters, or a value out of range. */
int api_parse_long(const char *s, long min, long max, long *out);

/* The host name of a Host header ("[::1]:8420" -> "::1",
 * "Example.COM.:80" -> "example.com": lower case, one trailing dot
 * dropped, a port of digits only) into name[0..len); 0, or -1 when h is
 * not one or the name does not fit. */
int api_parse_host(const char *h, char *name, size_t len);

/* 1 when the Content-Type ct (may be NULL) is a media type a web form
 * can send without a CORS preflight (urlencoded, multipart/form-data,
 * text/plain; any case, parameters ignored), else 0. */
int api_is_form_type(const char *ct);

/* The token of an Authorization header value "Bearer <token>" (the
 * scheme in any case, then spaces or tabs), borrowed from a; NULL when a
 * is NULL or another scheme.  The token may be empty. */
const char *api_parse_bearer(const char *a);

#endif
