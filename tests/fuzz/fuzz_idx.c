/*
 * fuzz_idx.c - libFuzzer target for the IDX dataset reader and converter
 * (POST /v1/datasets with multipart fields images and labels).
 *
 * Input layout: byte 0 says whether labels come too (bit 0); bytes 1-4
 * are the images part's length, little-endian (clamped to what is
 * there); the images follow, then the labels are the rest.  Both parts
 * are written as files (gzip or not: the reader sniffs), and the target
 * does what api/datasets.c does: slim_dataset_idx_size checks the
 * headers, the sizes are held to a limit as --max-upload-bytes holds
 * them (1 MiB here, so that a header may claim anything but a
 * conversion stays small), and slim_dataset_from_idx converts.  A
 * conversion that succeeds must give a file of the announced size that
 * slim_dataset_describe and slim_dataset_load accept, with as many
 * samples as the images' first dimension: the daemon stores what it
 * converted only after describing it, so a converter that wrote what
 * the describer refuses would fail every such upload.
 */
#include <sys/stat.h>
#include "tests/fuzz/fuzz.h"
#include "passes/formats/dataset.h"

#define MAX_IDX_BYTES (1u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char images[512], labels[512], out[512];
    struct slim_error err;
    struct slim_dataset d;
    struct stat st;
    uint64_t idx_bytes = 0, out_bytes = 0;
    uint32_t ilen;
    long live = slim_alloc_live();
    json_t *info = NULL;
    int with_labels, rc;

    if (size < 5)
        return 0;
    with_labels = data[0] & 1;
    ilen = (uint32_t)data[1] | (uint32_t)data[2] << 8 | (uint32_t)data[3] << 16 |
           (uint32_t)data[4] << 24;
    data += 5;
    size -= 5;
    if (ilen > size)
        ilen = (uint32_t)size;
    fuzz_file("images", data, ilen, images, sizeof images);
    fuzz_file("labels", data + ilen, size - ilen, labels, sizeof labels);
    snprintf(out, sizeof out, "%s/out.safetensors", fuzz_scratch());

    rc = slim_dataset_idx_size(images, with_labels ? labels : NULL, &idx_bytes, &out_bytes, &err);
    if (rc) {
        FUZZ_ASSERT(rc < 0 && err.code == rc, "idx_size: rc %d", rc);
        goto done;
    }
    if (idx_bytes > MAX_IDX_BYTES)
        goto done;
    rc = slim_dataset_from_idx(images, with_labels ? labels : NULL, out, &err);
    if (rc) {
        FUZZ_ASSERT(rc < 0 && err.code == rc && rc != SLIM_EINTERNAL, "from_idx: rc %d: %s",
                    rc, err.msg);
        FUZZ_ASSERT(stat(out, &st) != 0, "a failed conversion left its output");
        goto done;
    }
    FUZZ_ASSERT(stat(out, &st) == 0 && (uint64_t)st.st_size == out_bytes,
                "the output has %lld bytes, idx_size announced %llu", (long long)st.st_size,
                (unsigned long long)out_bytes);
    rc = slim_dataset_describe(out, &info, &err);
    FUZZ_ASSERT(rc == 0, "the converted dataset does not describe: %s", err.msg);
    json_decref(info);
    rc = slim_dataset_load(out, 0, &d, &err);
    FUZZ_ASSERT(rc == 0, "the converted dataset does not load: %s", err.msg);
    FUZZ_ASSERT((d.labels != NULL) == with_labels, "labels %s", d.labels ? "appeared" : "lost");
    slim_dataset_release(&d);
    unlink(out);
done:
    slim_alloc_trim();
    fuzz_check_live(live, "slim_dataset_from_idx");
    return 0;
}
