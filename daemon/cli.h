/*
 * cli.h - slimd's subcommands: `serve` (the daemon) and `compress` (the
 * same pipeline offline, for CI jobs without a server), `infer` and `eval`
 * (the inference engine on a safetensors input), `token` (bearer tokens
 * in the data dir), `submit` (a job sent to a server, for CI).  Each
 * returns the process exit code: 0 ok, 1 failure, 2 usage error; submit
 * and compress tell more (enum slimd_exit).
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
/* cli_scheduled.c: the scheduled jobs of /etc/slimd/scheduled.d */
int slimd_scheduled(int argc, char **argv);
/* cli_submit.c: the HTTP client for CI scripts and timers.  Runs once
 * per process (it calls curl_global_init/cleanup); prints the job id on
 * stdout, the rest on stderr; returns an enum slimd_exit. */
int slimd_submit(int argc, char **argv);
void slimd_usage(FILE *f);

/* The exit statuses of `submit` and `compress`, which scripts branch on
 * (README, CI): the values are an interface and never change. */
enum slimd_exit {
    SLIMD_EXIT_OK = 0,
    SLIMD_EXIT_FAILURE = 1,       /* anything not below */
    SLIMD_EXIT_BAD_INPUT = 2,     /* command line, spec or model */
    SLIMD_EXIT_JOB_FAILED = 3,    /* the job (compression) failed or was canceled */
    SLIMD_EXIT_GATE_FAILED = 4,   /* a quality gate was missed (GATE_FAILED) */
    SLIMD_EXIT_UNREACHABLE = 5,   /* submit: the server could not be reached */
};

#endif
