/*
 * onnx_plain.c - ONNX models without their weights and back: the graph
 * that slimd's entropy container carries (docs/artifact-format.md,
 * "Entropy-coded artifacts"), and the plain ONNX model that `slimd
 * decode` rebuilds from it.
 *
 * The container holds the model's ModelProto with every initializer
 * that slimd stores as a tensor reduced to a stub (name, dims and data
 * type, no data): the weights live, coded, in the safetensors part.  An
 * initializer of a type slimd does not store (strings, 4-bit types)
 * stays in the graph with its bytes, moved inline if it was in external
 * data.  Decoding unpacks that ModelProto, gives each stub the raw_data
 * of the decoded tensor of its name (checked against its type and
 * dims), and packs it as one .onnx file.  A model over protobuf's 2 GiB
 * cannot be one file: such a container is refused at decode with a
 * message saying so.
 */
#include <string.h>
#include "passes/decode.h"
#include "passes/formats/onnx.h"
#include "passes/formats/writer.h"

int slim_onnx_graph_stub(struct slim_onnx *m, const struct slim_model *kept, uint8_t **out,
                         size_t *len, struct slim_error *err)
{
    Onnx__GraphProto *g = m->graph, g2;
    Onnx__ModelProto mp = *m->model;
    Onnx__TensorProto **inits = slim_calloc(g->n_initializer + 1, sizeof *inits);
    Onnx__TensorProto *made = slim_calloc(g->n_initializer + 1, sizeof *made);
    uint8_t *buf = NULL;
    size_t size;
    int rc = 0;

    *out = NULL;
    *len = 0;
    if (!inits || !made) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    g2 = *g;
    for (size_t i = 0; i < g->n_initializer; i++) {
        const Onnx__TensorProto *tp = g->initializer[i];
        Onnx__TensorProto *s = &made[i];
        int external = tp->has_data_location &&
                       tp->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
        if (!(kept && tp->name && slim_model_find(kept, tp->name)) && !external) {
            inits[i] = g->initializer[i];
            continue;
        }
        onnx__tensor_proto__init(s);
        s->name = tp->name;
        s->n_dims = tp->n_dims;
        s->dims = tp->dims;
        s->has_data_type = tp->has_data_type;
        s->data_type = tp->data_type;
        if (!(kept && tp->name && slim_model_find(kept, tp->name))) {
            /* not stored by slimd but external: its bytes go inline */
            const void *data;
            size_t nbytes;
            int fb;
            if ((rc = slim_onnx_tensor_data(m, tp, &data, &nbytes, &fb, err)))
                goto out;
            s->has_raw_data = 1;
            s->raw_data.len = nbytes;
            s->raw_data.data = (uint8_t *)data;
        }
        inits[i] = s;
    }
    g2.initializer = inits;
    mp.graph = &g2;
    size = onnx__model_proto__get_packed_size(&mp);
    if (!(buf = slim_aligned_alloc(size + 1))) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory packing the graph");
        goto out;
    }
    onnx__model_proto__pack(&mp, buf);
    *out = buf;
    *len = size;
out:
    slim_free(inits);
    slim_free(made);
    return rc;
}

static const struct slim_tensor *find_decoded(const struct slim_tensor *t, size_t n,
                                              const char *name)
{
    for (size_t i = 0; name && i < n; i++)
        if (!strcmp(t[i].name, name))
            return &t[i];
    return NULL;
}

/* Packs mp into path, atomically. */
static int write_model(Onnx__ModelProto *mp, const char *path, struct slim_error *err)
{
    struct slim_writer *wr = NULL;
    size_t size = onnx__model_proto__get_packed_size(mp);
    struct slim_piece piece;
    uint8_t *buf;
    int rc;
    if (size > SLIM_ONNX_MAX_PROTO)
        return slim_error_set(err, SLIM_ETOOBIG, "the decoded model is %zu bytes, over "
                              "protobuf's 2 GiB for one .onnx file", size);
    if (!(buf = slim_aligned_alloc(size + 1)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory (%zu bytes)", size);
    onnx__model_proto__pack(mp, buf);
    if ((rc = slim_writer_open(path, NULL, NULL, &wr, err))) {
        slim_aligned_free(buf);
        return rc;
    }
    piece = (struct slim_piece){buf, size};
    if ((rc = slim_writer_submit(wr, &piece, 1, (void *[]){buf}, 1, err))) {
        slim_writer_abort(wr);
        return rc;
    }
    return slim_writer_finish(wr, err);
}

int slim_onnx_plain_write(const void *graph, size_t glen, const struct slim_tensor *t,
                          size_t n, const char *path, struct slim_error *err)
{
    Onnx__ModelProto *mp = onnx__model_proto__unpack(NULL, glen, graph);
    ProtobufCBinaryData *saved = NULL;
    protobuf_c_boolean *had = NULL;
    Onnx__GraphProto *g;
    size_t done = 0;
    int rc = 0;

    if (!mp || !mp->graph) {
        rc = slim_error_set(err, SLIM_EFORMAT, "the container's ONNX graph does not parse");
        goto out;
    }
    g = mp->graph;
    saved = slim_calloc(g->n_initializer + 1, sizeof *saved);
    had = slim_calloc(g->n_initializer + 1, sizeof *had);
    if (!saved || !had) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < g->n_initializer; i++, done++) {
        Onnx__TensorProto *tp = g->initializer[i];
        const struct slim_tensor *d = find_decoded(t, n, tp->name);
        int64_t numel = 1;
        saved[i] = tp->raw_data;
        had[i] = tp->has_raw_data;
        if (!d)
            continue;
        for (size_t k = 0; k < tp->n_dims; k++) {
            if (tp->dims[k] < 0 || (tp->dims[k] && numel > INT64_MAX / tp->dims[k]))
                numel = -1;
            if (numel < 0)
                break;
            numel *= tp->dims[k];
        }
        if (!tp->has_data_type || tp->data_type != slim_onnx_from_dtype(d->dtype) ||
            numel != slim_tensor_numel(d)) {
            rc = slim_error_set(err, SLIM_EFORMAT, "initializer '%.100s': the graph says %s "
                                "x %lld, the decoded tensor %s x %lld", tp->name,
                                slim_onnx_type_name(tp->has_data_type ? tp->data_type : 0),
                                (long long)numel, slim_dtype_name(d->dtype),
                                (long long)slim_tensor_numel(d));
            goto out;
        }
        tp->has_raw_data = 1;
        tp->raw_data.len = d->nbytes;
        tp->raw_data.data = (uint8_t *)d->data;
    }
    for (size_t i = 0; i < g->n_initializer; i++) {
        const Onnx__TensorProto *tp = g->initializer[i];
        int64_t numel = 1;
        for (size_t k = 0; k < tp->n_dims; k++)
            numel *= tp->dims[k] > 0 ? tp->dims[k] : 0;
        if (!tp->has_raw_data && numel > 0 && !tp->n_float_data && !tp->n_int32_data &&
            !tp->n_int64_data && !tp->n_double_data && !tp->n_uint64_data &&
            !tp->n_string_data) {
            rc = slim_error_set(err, SLIM_EFORMAT, "initializer '%.100s' has no data in the "
                                "container", tp->name);
            goto out;
        }
    }
    rc = write_model(mp, path, err);
out:
    /* the decoded bytes are the caller's: give protobuf-c back its own */
    for (size_t i = 0; mp && mp->graph && saved && i < done; i++) {
        mp->graph->initializer[i]->raw_data = saved[i];
        mp->graph->initializer[i]->has_raw_data = had[i];
    }
    slim_free(saved);
    slim_free(had);
    if (mp)
        onnx__model_proto__free_unpacked(mp, NULL);
    return rc;
}

int slim_onnx_plain_from_artifact(const char *in_path, const char *path,
                                  struct slim_error *err)
{
    (void)path;
    return slim_error_set(err, SLIM_EUNSUPPORTED, "'%.200s': decoding ONNX artifacts is not "
                          "written yet", in_path);
}
