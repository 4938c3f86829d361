/*
 * s3.h - a small S3 client for the blob store (blob.c): objects named
 * PREFIX/<sha256> in one bucket of an S3-compatible server, reached by
 * path-style URLs (ENDPOINT/BUCKET/KEY) and signed with AWS Signature
 * Version 4.  Used by storage/ only.
 *
 * Every call makes its own libcurl handle, so any thread may call any
 * function at the same time on one struct s3 (which is read-only after
 * s3_new).  Errors are SLIM_EIO (network, HTTP status, a malformed
 * answer) with a message that starts "s3: " and names the endpoint, or
 * SLIM_ENOMEM; a missing object is SLIM_ENOTFOUND.
 */
#ifndef SLIM_S3_H
#define SLIM_S3_H

#include <stdint.h>
#include "passes/slim.h"

struct s3;

/* url: "s3://bucket" or "s3://bucket/prefix".  The endpoint comes from
 * SLIMD_S3_ENDPOINT (http(s)://host[:port], required), the credentials
 * from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (required), the region
 * from AWS_REGION (default us-east-1); SLIMD_S3_PART_BYTES (default 64
 * MiB, at least 5 MiB) is the size over which a PUT becomes a multipart
 * upload and the size of its parts.  SLIM_EINVAL naming what is missing
 * or malformed.  *out is new. */
int s3_new(const char *url, struct s3 **out, struct slim_error *err);
void s3_free(struct s3 *s);
/* "http://127.0.0.1:9000 bucket prefix", for messages and the log (borrowed). */
const char *s3_describe(const struct s3 *s);

/* *exists: 1 and *bytes its size when the object of sha is there, 0 when not. */
int s3_head(struct s3 *s, const char *sha, int *exists, uint64_t *bytes, struct slim_error *err);
/* Stores the file at path (bytes long, whose sha256 is sha) as sha's
 * object: one PUT signed with its sha256, or a multipart upload (each
 * part signed with its own sha256; the upload is aborted on failure). */
int s3_put_file(struct s3 *s, const char *sha, const char *path, uint64_t bytes,
                struct slim_error *err);
/* Writes the object's bytes [offset, offset + len) (len 0: to its end)
 * to fd, from its current position, passing each piece to sink(ud, ...)
 * too when sink is not NULL.  SLIM_ENOTFOUND when there is no object. */
int s3_get(struct s3 *s, const char *sha, uint64_t offset, uint64_t len, int fd,
           void (*sink)(void *ud, const void *buf, size_t len), void *ud,
           struct slim_error *err);
/* Removes sha's object (0 when there was none). */
int s3_delete(struct s3 *s, const char *sha, struct slim_error *err);

#endif
