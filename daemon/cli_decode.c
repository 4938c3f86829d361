/*
 * cli_decode.c - `slimd decode ARTIFACT -o OUT`: any slimd artifact back
 * to plain weights (passes/decode.c): a safetensors artifact to a
 * safetensors file of dense float32 weights; an ONNX artifact, the
 * daemon's tar of one, or the entropy container of an ONNX model to a
 * plain .onnx whose initializers hold the decoded weights (ONNX Runtime
 * runs it, with the outputs of the compressed artifact).
 *
 * Exit codes: 0 done; 2 usage, or an input that is not a slimd artifact
 * or is malformed (the message names the file and the problem); 1 any
 * other failure (I/O, memory).
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include "daemon/cli.h"
#include "passes/slim.h"

int slimd_decode(int argc, char **argv)
{
    static const struct option opts[] = {
        {"output", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *out = NULL, *in;
    struct slim_error err;
    int c, kind = 0, rc;

    optind = 1;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'h':
            printf("usage: slimd decode ARTIFACT -o OUT\n");
            return 0;
        default:
            fprintf(stderr, "usage: slimd decode ARTIFACT -o OUT\n");
            return 2;
        }
    }
    if (optind + 1 != argc || !out) {
        fprintf(stderr, "usage: slimd decode ARTIFACT -o OUT\n");
        return 2;
    }
    in = argv[optind];
    memset(&err, 0, sizeof err);
    rc = slim_artifact_decode(in, out, &kind, &err);
    if (rc) {
        fprintf(stderr, "slimd decode: %s: %s\n", in, err.msg);
        return rc == SLIM_EFORMAT || rc == SLIM_EINVAL ? 2 : 1;
    }
    printf("%s: decoded to %s (%s)\n", in, out, kind ? "onnx" : "safetensors");
    return 0;
}
