/*
 * fuzz_upload.c - libFuzzer target for what POST /v1/models does with an
 * uploaded file once it is on disk: slim_format_detect on its first 512
 * bytes, then slim_model_describe, which opens it as whatever it holds
 * (one safetensors file, an ONNX model, or an uncompressed tar of a
 * sharded checkpoint, index and shards, or of an ONNX model and its
 * external data) and validates all of it.  The tar reader
 * (slim_tar_members) is also called on the bytes directly, and every
 * member it lists must lie inside the file, on a 512-byte boundary.
 *
 * The input is the upload, written to a scratch file alone in its own
 * folder (an .onnx's external data files, named relative to it, are not
 * there; in a tar they are members).  A JSON index is what a tar's
 * index member holds; uploaded alone it is not detected as a model, so,
 * as in the daemon, it is never opened (its shards would be looked up
 * beside it).
 */
#include "tests/fuzz/fuzz.h"
#include "passes/formats/source.h"

static void check_tar(const uint8_t *data, size_t size)
{
    struct slim_tar_member *m = NULL;
    struct slim_error err;
    size_t n = 0;
    int rc = slim_tar_members(data, size, &m, &n, &err);
    if (rc) {
        FUZZ_ASSERT(rc < 0 && err.code == rc, "tar: rc %d", rc);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        FUZZ_ASSERT(m[i].off % 512 == 0 && m[i].off <= size && m[i].size <= size - m[i].off,
                    "member %zu [%llu, +%llu) of a %zu-byte tar", i,
                    (unsigned long long)m[i].off, (unsigned long long)m[i].size, size);
        FUZZ_ASSERT(memchr(m[i].name, 0, sizeof m[i].name) != NULL, "name not terminated");
    }
    slim_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[512];
    struct slim_error err;
    long live = slim_alloc_live();
    json_t *info = NULL;
    const char *fmt;
    int rc;

    check_tar(data, size);
    fmt = slim_format_detect(data, size < 512 ? size : 512);
    if (!fmt)
        goto done;
    fuzz_file("upload", data, size, path, sizeof path);
    rc = slim_model_describe(path, &info, &err);
    if (rc) {
        FUZZ_ASSERT(rc < 0 && err.code == rc && !info, "describe: rc %d", rc);
        FUZZ_ASSERT(rc != SLIM_ENOMEM && rc != SLIM_EINTERNAL,
                    "a %zu-byte %s upload: %s", size, fmt, err.msg);
    } else {
        char *text = json_dumps(info, JSON_COMPACT);
        FUZZ_ASSERT(text != NULL, "the model record does not dump");
        free(text);
        json_decref(info);
    }
    unlink(path);
done:
    slim_alloc_trim();
    fuzz_check_live(live, "slim_model_describe");
    return 0;
}
