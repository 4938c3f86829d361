/*
 * fuzz_safetensors.c - libFuzzer target for the safetensors reader
 * (slim_st_parse, which every model upload, shard and dataset goes
 * through).
 *
 * The input is the whole file.  Beyond "no crash, no sanitizer report,
 * no leak", the target checks what the reader promises: on failure the
 * model is empty; on success every tensor lies inside the data area, its
 * byte count is its shape times its dtype size, the tensors tile the
 * data area, every tensor is found by name, and the metadata is an
 * object of strings.  Then the parsed model is written back through the
 * writer's header code (slim_st_header) and parsed again: the second
 * parse must give the same tensors, bytes and metadata, so reader and
 * writer agree on every file the reader accepts.
 */
#include "tests/fuzz/fuzz.h"
#include "passes/formats/writer.h"

static void check_model(const uint8_t *data, size_t size, const struct slim_model *m)
{
    uint64_t hlen;
    const unsigned char *area, *expect;
    memcpy(&hlen, data, 8);   /* little-endian host, as libslim assumes */
    area = data + 8 + hlen;
    expect = area;
    FUZZ_ASSERT(json_is_object(m->metadata), "metadata is not an object");
    for (size_t i = 0; i < m->n_tensors; i++) {
        const struct slim_tensor *t = &m->tensors[i];
        const unsigned char *d = t->data;
        FUZZ_ASSERT(d == expect, "tensor %zu does not follow the previous one", i);
        FUZZ_ASSERT(d >= area && d + t->nbytes <= data + size, "tensor %zu outside the data",
                    i);
        FUZZ_ASSERT((uint64_t)slim_tensor_numel(t) * slim_dtype_size(t->dtype) == t->nbytes,
                    "tensor %zu: numel x dtype size != nbytes", i);
        FUZZ_ASSERT(slim_model_find(m, t->name) == t, "tensor %zu not found by name", i);
        if (t->nbytes) {   /* ASan checks these reads against the input's bounds */
            volatile unsigned char first = d[0], last = d[t->nbytes - 1];
            (void)first;
            (void)last;
        }
        expect = d + t->nbytes;
    }
    FUZZ_ASSERT(expect == data + size, "tensors do not cover the data area");
}

/* Writes m back (header from the writer, data in file order), parses
 * that and compares. */
static void round_trip(const struct slim_model *m)
{
    struct slim_error err;
    struct slim_model m2;
    char *hdr = NULL;
    unsigned char *buf;
    size_t hlen = 0, total, off;
    int rc;

    rc = slim_st_header(m->tensors, m->n_tensors, m->metadata, &hdr, &hlen, &err);
    if (rc) {
        /* names the writer cannot encode would make an artifact that no
         * reader opens: the reader must not have accepted them */
        FUZZ_ASSERT(rc == SLIM_ENOMEM, "the writer refuses what the reader took: %s", err.msg);
        return;
    }
    total = hlen;
    for (size_t i = 0; i < m->n_tensors; i++)
        total += m->tensors[i].nbytes;
    buf = malloc(total ? total : 1);
    FUZZ_ASSERT(buf != NULL, "malloc %zu", total);
    memcpy(buf, hdr, hlen);
    off = hlen;
    for (size_t i = 0; i < m->n_tensors; i++) {
        if (m->tensors[i].nbytes)
            memcpy(buf + off, m->tensors[i].data, m->tensors[i].nbytes);
        off += m->tensors[i].nbytes;
    }
    slim_free(hdr);
    rc = slim_st_parse(buf, total, &m2, &err);
    FUZZ_ASSERT(rc == 0, "the reader refuses what the writer wrote: %s", err.msg);
    FUZZ_ASSERT(m2.n_tensors == m->n_tensors, "%zu tensors, then %zu", m->n_tensors,
                m2.n_tensors);
    for (size_t i = 0; i < m->n_tensors; i++) {
        const struct slim_tensor *a = &m->tensors[i], *b = &m2.tensors[i];
        FUZZ_ASSERT(!strcmp(a->name, b->name) && a->dtype == b->dtype && a->ndim == b->ndim &&
                    !memcmp(a->shape, b->shape, sizeof a->shape[0] * (size_t)a->ndim) &&
                    a->nbytes == b->nbytes && (!a->nbytes || !memcmp(a->data, b->data, a->nbytes)),
                    "tensor %zu changed in the round trip", i);
    }
    FUZZ_ASSERT(json_equal(m->metadata, m2.metadata), "metadata changed in the round trip");
    slim_model_release(&m2);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct slim_model m;
    struct slim_error err;
    long live = slim_alloc_live();
    int rc;

    (void)slim_format_detect(data, size);
    rc = slim_st_parse(data, size, &m, &err);
    if (rc) {
        FUZZ_ASSERT(rc < 0 && err.code == rc && m.n_tensors == 0 && !m.tensors && !m.metadata,
                    "a failed parse left a model behind (rc %d)", rc);
        FUZZ_ASSERT(memchr(err.msg, 0, sizeof err.msg) != NULL, "message not terminated");
    } else {
        check_model(data, size, &m);
        round_trip(&m);
        slim_model_release(&m);
    }
    fuzz_check_live(live, "slim_st_parse");
    return 0;
}
