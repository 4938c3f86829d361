/*
 * text.c - the one UTF-8 check, for names that arrive as raw bytes.
 *
 * Names in a safetensors header come through jansson, which refuses
 * invalid UTF-8; names in an ONNX protobuf or a tar header are bytes
 * that no one has checked, and they end up in JSON (the model's record,
 * reports, artifact metadata), where jansson refuses them again, late
 * and silently (json_string returns NULL).  The readers check them here
 * first, with jansson's rules: no overlong forms, no surrogates, nothing
 * past U+10FFFF.
 */
#include "passes/slim.h"

int slim_utf8_valid(const char *text)
{
    const unsigned char *s = (const unsigned char *)text;
    while (*s) {
        unsigned c = *s, n, cp;
        if (c < 0x80) {
            s++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            n = 1, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
            n = 2, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            n = 3, cp = c & 0x07;
        else
            return 0;
        for (unsigned i = 1; i <= n; i++) {
            if ((s[i] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i] & 0x3f);
        }
        if ((n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return 0;
        s += n + 1;
    }
    return 1;
}
