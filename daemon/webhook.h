/*
 * webhook.h - POSTs a finished job's JSON to its spec's notify.url.
 *
 * A thread of its own (never the libuv loop, never an HTTP thread)
 * sends what the store lists as due (storage: store_webhook_due), so a
 * slow or dead receiver holds up nothing else.  Deliveries are rows in
 * the database, written when the job is submitted: a restart resumes
 * the ones still pending, with their attempts counted.
 */
#ifndef SLIM_WEBHOOK_H
#define SLIM_WEBHOOK_H

#include "storage/store.h"

struct webhook;

/* Starts the sender on st (borrowed; it must outlive the sender).
 * secret (copied; NULL or "": none) signs each body: X-Slimd-Signature:
 * sha256=HEX, the HMAC-SHA256 of "<X-Slimd-Timestamp>.<body>".  *out is
 * new; stop it with webhook_stop. */
int webhook_start(struct store *st, const char *secret, struct webhook **out,
                  struct slim_error *err);
/* Stops the sender (an attempt under way is abandoned and stays
 * pending) and frees it.  Any thread but the sender's. */
void webhook_stop(struct webhook *wh);

#endif
