/*
 * bench_train.c - training throughput of the trainer (passes/engine/
 * train.h) on an ONNX model and Fashion-MNIST, for bench_train.sh, which
 * prints it beside torch's (tests/bench/train_peer.py) on the same model,
 * the same data, the same batch size and the same cores.  A benchmark,
 * not a test: it prints one JSON line and never fails on the figures.
 *
 *   bench_train MODEL.onnx TRAIN.safetensors [TEST.safetensors]
 *       [--batch B] [--samples N] [--epochs E] [--lr LR] [--threads T]
 *
 * TRAIN/TEST are datasets in slimd's canonical form (formats/dataset.h;
 * bench_train.sh makes them from the IDX files with `slimd dataset`-style
 * conversion, slim_dataset_from_idx).  Adam, seed 0.  samples_per_s is
 * the fit's own figure for the last epoch (batch gathering, forward,
 * backward and the optimizer; the held-out evaluation is not in it).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <cblas.h>
#include "passes/engine/train.h"
#include "passes/formats/dataset.h"


static int epoch_cb(void *ud, const struct slim_train_progress *p)
{
    (void)ud;
    fprintf(stderr, "epoch %d/%d: loss %.4f, train acc %.4f, %.0f samples/s\n", p->epoch,
            p->epochs, p->loss, p->accuracy, p->samples_per_s);
    return 0;
}

int main(int argc, char **argv)
{
    const char *model = NULL, *train = NULL, *test = NULL;
    struct slim_train_opts o;
    struct slim_onnx m;
    struct slim_trainer *t = NULL;
    struct slim_dataset dtr, dte;
    struct slim_error err;
    struct slim_train_progress p;
    int64_t samples = 0;
    int threads = 2, pos = 0;
    double test_loss = -1, test_acc = -1;

    slim_blas_pick_kernels(argv);   /* the daemon's kernels (passes/blas.c) */
    slim_train_opts_init(&o);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--batch") && i + 1 < argc)
            o.batch_size = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--samples") && i + 1 < argc)
            samples = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--epochs") && i + 1 < argc)
            o.epochs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--lr") && i + 1 < argc)
            o.lr = (float)atof(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (argv[i][0] != '-' && pos == 0)
            model = argv[i], pos++;
        else if (argv[i][0] != '-' && pos == 1)
            train = argv[i], pos++;
        else if (argv[i][0] != '-' && pos == 2)
            test = argv[i], pos++;
        else {
            fprintf(stderr, "usage: bench_train MODEL.onnx TRAIN.safetensors [TEST.safetensors] "
                            "[--batch B] [--samples N] [--epochs E] [--lr LR] [--threads T]\n");
            return 2;
        }
    }
    if (!model || !train) {
        fprintf(stderr, "bench_train: a model and a training set are needed\n");
        return 2;
    }
    openblas_set_num_threads(threads);
    memset(&dte, 0, sizeof dte);
    if (slim_onnx_open(model, &m, &err) ||
        slim_dataset_load(train, samples, &dtr, &err) ||
        (test && slim_dataset_load(test, 0, &dte, &err)) ||
        slim_trainer_new(&m, &o, &t, &err)) {
        fprintf(stderr, "bench_train: %s\n", err.msg);
        return 1;
    }
    struct slim_train_data d = {.x = dtr.x, .labels = dtr.labels, .n = dtr.n};
    struct slim_train_hooks h = {.epoch = epoch_cb};
    if (slim_trainer_fit(t, &d, NULL, &h, &err)) {
        fprintf(stderr, "bench_train: %s\n", err.msg);
        return 1;
    }
    slim_trainer_progress(t, &p);
    if (test) {
        struct slim_train_data e = {.x = dte.x, .labels = dte.labels, .n = dte.n};
        if (slim_trainer_evaluate(t, &e, &test_loss, &test_acc, &err)) {
            fprintf(stderr, "bench_train: %s\n", err.msg);
            return 1;
        }
    }
    printf("{\"core\": \"%s\", \"samples\": %lld, \"batch\": %lld, \"epochs\": %d, \"threads\": %d, "
           "\"samples_per_s\": %.1f, \"seconds\": %.3f, \"loss\": %.5f, \"train_accuracy\": %.5f, "
           "\"test_loss\": %.5f, \"test_accuracy\": %.5f}\n",
           openblas_get_corename(), (long long)dtr.n, (long long)o.batch_size, o.epochs, threads, p.samples_per_s,
           p.seconds, p.loss, p.accuracy, test_loss, test_acc);
    slim_trainer_free(t);
    slim_dataset_release(&dtr);
    if (test)
        slim_dataset_release(&dte);
    slim_onnx_release(&m);
    return 0;
}
