/*
 * cli.h - slimd's subcommands: `serve` (the daemon) and `compress` (the
 * same pipeline offline, for CI jobs without a server), `infer` and `eval`
 * (the inference engine on a safetensors input), `token` (bearer tokens
 * in the data dir).  Each returns the process exit code: 0 ok, 1
 * failure, 2 usage error.
 */
#ifndef SLIM_CLI_H
#define SLIM_CLI_H

#include <stdio.h>

int slimd_serve(int argc, char **argv);
int slimd_compress(int argc, char **argv);
/* cli_infer.c: the engine on a safetensors input */
int slimd_infer(int argc, char **argv);
int slimd_eval(int argc, char **argv);
/* cli_token.c: bearer tokens in the data dir's database */
int slimd_token(int argc, char **argv);
/* cli_decode.c: any artifact back to plain safetensors or ONNX */
int slimd_decode(int argc, char **argv);
void slimd_usage(FILE *f);

#endif
