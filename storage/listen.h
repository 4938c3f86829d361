/*
 * listen.h - PostgreSQL LISTEN for the runner: wake-ups without polling.
 *
 * A connection of its own (the store's serves statements under its
 * mutex, and LISTEN needs a socket the loop can watch): it LISTENs on
 * "slimd_jobs" (a job was queued or re-queued: an idle node claims) and
 * "slimd_cancel" (payload: the id of a running job whose cancel was
 * asked for: the node running it stops it).  store.c sends both
 * (pg_notify, right after the write).  The
 * runner polls listen_fd with libuv and calls listen_drain when it is
 * readable.  Notifications are a shortcut, not the truth: a node also
 * claims on a slow poll and reads cancels in its heartbeat, so a lost
 * connection costs latency, never a job.
 */
#ifndef SLIM_LISTEN_H
#define SLIM_LISTEN_H

#include "passes/slim.h"

struct store_listen;

/* Connects to uri (a postgresql:// URI) and LISTENs.  SLIM_EIO naming
 * the server's message when it cannot. */
int listen_open(const char *uri, struct store_listen **out, struct slim_error *err);
/* The socket to watch for reading. */
int listen_fd(const struct store_listen *l);
/* Reads what arrived and calls fn(ud, channel, payload) per
 * notification.  0, or SLIM_EIO when the connection was lost (close it
 * and open a new one). */
int listen_drain(struct store_listen *l, void (*fn)(void *ud, const char *channel,
                                                     const char *payload), void *ud);
/* NULL is a no-op. */
void listen_close(struct store_listen *l);

#endif
