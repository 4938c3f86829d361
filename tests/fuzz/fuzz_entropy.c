/*
 * fuzz_entropy.c - libFuzzer target for the entropy-coded tensors of
 * docs/artifact-format.md: the stream decoder (passes/kernels/entropy.c)
 * and `slimd decode` over a whole artifact (passes/decode.c).
 *
 * An input whose first byte is the stream version (1) is one stream:
 * the header must be refused or describe a stream inside the input; a
 * decoded stream gives positions that increase and stay below n; and
 * encoding what was decoded, then decoding that, gives the same
 * positions and codes (the encoder and decoder agree on everything the
 * decoder accepts).  Any other input is written to a file and decoded
 * as an artifact: SLIM_EFORMAT with a message, or a decoded file, never
 * a crash or a leak.  Tensors claimed larger than 2^22 elements are
 * skipped (a real artifact may hold them; the fuzzer would only
 * measure malloc).
 *
 * Seeds (tests/fuzz/corpus/entropy/): streams and small artifacts that
 * `slimd compress` wrote with "output": {"entropy": true} for a 20x30
 * model (prune + cluster, prune + int8, int4 only, prune + fp16).
 */
#include "tests/fuzz/fuzz.h"
#include "passes/kernels/kernels.h"

#define MAX_ELEMS ((uint64_t)1 << 22)

static void one_stream(const uint8_t *data, size_t size)
{
    struct slim_entropy_info info, info2;
    struct slim_error err;
    uint64_t *pos = NULL, *pos2 = NULL;
    uint8_t *codes = NULL, *codes2 = NULL, *keep = NULL, *again = NULL;
    size_t len2 = 0;
    int rc = slim_entropy_header(data, size, &info, &err);
    if (rc) {
        FUZZ_ASSERT(rc == SLIM_EFORMAT && err.code == rc, "header: rc %d", rc);
        return;
    }
    FUZZ_ASSERT(info.m <= info.n && info.values_at <= size, "header out of bounds");
    if (info.n > MAX_ELEMS)
        return;
    pos = slim_malloc((size_t)info.m * sizeof *pos + 1);
    codes = slim_malloc((size_t)info.m + 1);
    FUZZ_ASSERT(pos && codes, "out of memory");
    rc = slim_entropy_decode(data, size, &info, pos, codes, &err);
    if (rc) {
        FUZZ_ASSERT(rc == SLIM_EFORMAT, "decode: rc %d", rc);
        goto out;
    }
    for (uint64_t k = 0; k < info.m; k++)
        FUZZ_ASSERT(pos[k] < info.n && (!k || pos[k] > pos[k - 1]), "position %llu",
                    (unsigned long long)k);
    /* encode what was decoded; it must decode to the same */
    keep = slim_calloc((size_t)(info.n / 8 + 1), 1);
    FUZZ_ASSERT(keep, "out of memory");
    for (uint64_t k = 0; k < info.m; k++)
        keep[pos[k] / 8] |= (uint8_t)(1u << (pos[k] % 8));
    {
        struct slim_entropy_in in = {info.n, info.gap_bits ? keep : NULL,
                                     info.code_bits ? codes : NULL, info.code_bits,
                                     info.code_bits ? NULL : data + info.values_at,
                                     info.code_bits ? 0 : info.value_bytes};
        rc = slim_entropy_encode(&in, &again, &len2, &err);
        FUZZ_ASSERT(rc == 0, "re-encode: %s", err.msg);
    }
    rc = slim_entropy_header(again, len2, &info2, &err);
    FUZZ_ASSERT(rc == 0 && info2.n == info.n && info2.m == info.m, "re-encoded header");
    pos2 = slim_malloc((size_t)info.m * sizeof *pos2 + 1);
    codes2 = slim_malloc((size_t)info.m + 1);
    FUZZ_ASSERT(pos2 && codes2, "out of memory");
    rc = slim_entropy_decode(again, len2, &info2, pos2, codes2, &err);
    FUZZ_ASSERT(rc == 0, "re-decode: %s", err.msg);
    FUZZ_ASSERT(!info.m || !memcmp(pos, pos2, (size_t)info.m * sizeof *pos), "positions differ");
    FUZZ_ASSERT(!info.m || !info.code_bits || !memcmp(codes, codes2, (size_t)info.m),
                "codes differ");
    FUZZ_ASSERT(info.code_bits || !info.m ||
                    !memcmp(data + info.values_at, again + info2.values_at,
                            (size_t)info.m * (size_t)info.value_bytes),
                "values differ");
out:
    slim_free(pos);
    slim_free(codes);
    slim_free(pos2);
    slim_free(codes2);
    slim_free(keep);
    slim_aligned_free(again);
}

/* 1 when every slimd.tensors entry (and low-rank factor) of the file is
 * small enough to decode here. */
static int small_entries(const uint8_t *data, size_t size)
{
    struct slim_model m;
    struct slim_error err;
    json_t *entries, *e, *f;
    const char *name, *fk, *text;
    int ok = 1;
    if (slim_st_parse(data, size, &m, &err))
        return 1; /* decode refuses it anyway */
    text = json_string_value(json_object_get(m.metadata, "slimd.tensors"));
    entries = text ? json_loads(text, 0, NULL) : NULL;
    json_object_foreach(entries, name, e) {
        json_t *list[3] = {e, NULL, NULL};
        int k = 1;
        json_object_foreach(json_object_get(e, "factors"), fk, f) {
            if (k < 3)
                list[k++] = f;
        }
        for (int j = 0; j < k; j++) {
            json_t *sh = json_object_get(list[j], "shape"), *d;
            size_t i;
            uint64_t n = 1;
            json_array_foreach(sh, i, d) {
                json_int_t v = json_integer_value(d);
                if (v < 0 || (v && n > MAX_ELEMS / (uint64_t)v))
                    ok = 0;
                else
                    n *= (uint64_t)v;
            }
            ok &= n <= MAX_ELEMS;
        }
    }
    json_decref(entries);
    slim_model_release(&m);
    return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char in[512], out[512];
    struct slim_error err;
    long live = slim_alloc_live();
    int kind, rc;

    if (size && data[0] == SLIM_ENTROPY_VERSION) {
        one_stream(data, size);
        fuzz_check_live(live, "stream");
        return 0;
    }
    if (!small_entries(data, size))
        return 0;
    fuzz_file("artifact", data, size, in, sizeof in);
    snprintf(out, sizeof out, "%s/decoded", fuzz_scratch());
    rc = slim_artifact_decode(in, out, &kind, &err);
    FUZZ_ASSERT(rc <= 0, "rc %d", rc);
    if (rc)
        FUZZ_ASSERT(err.code == rc && err.msg[0], "error without a message: %d", rc);
    unlink(out);
    fuzz_check_live(live, "artifact");
    return 0;
}
