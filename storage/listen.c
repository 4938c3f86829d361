/*
 * listen.c - see listen.h.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <libpq-fe.h>
#include "storage/listen.h"

struct store_listen {
    PGconn *conn;
};

static int pg_fail(PGconn *c, struct slim_error *err, const char *what)
{
    char msg[256];
    size_t n;
    snprintf(msg, sizeof msg, "%s", c ? PQerrorMessage(c) : "out of memory");
    for (n = strlen(msg); n && isspace((unsigned char)msg[n - 1]); n--)
        msg[n - 1] = 0;
    return slim_error_set(err, SLIM_EIO, "postgresql: %s: %s", what, msg);
}

int listen_open(const char *uri, struct store_listen **out, struct slim_error *err)
{
    static const char *const keys[] = {"application_name", "connect_timeout", "dbname", NULL};
    const char *vals[] = {"slimd-listen", "10", uri, NULL};
    struct store_listen *l;
    PGresult *res;
    int rc;

    *out = NULL;
    if (!(l = slim_calloc(1, sizeof *l)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    l->conn = PQconnectdbParams(keys, vals, 1);
    if (!l->conn || PQstatus(l->conn) != CONNECTION_OK) {
        rc = pg_fail(l->conn, err, "cannot connect for LISTEN");
        listen_close(l);
        return rc;
    }
    res = PQexec(l->conn, "LISTEN slimd_jobs; LISTEN slimd_cancel");
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        PQclear(res);
        rc = pg_fail(l->conn, err, "LISTEN");
        listen_close(l);
        return rc;
    }
    PQclear(res);
    if (PQsetnonblocking(l->conn, 1)) {
        rc = pg_fail(l->conn, err, "LISTEN");
        listen_close(l);
        return rc;
    }
    *out = l;
    return 0;
}

int listen_fd(const struct store_listen *l)
{
    return PQsocket(l->conn);
}

int listen_drain(struct store_listen *l, void (*fn)(void *ud, const char *channel,
                                                     const char *payload), void *ud)
{
    PGnotify *n;
    if (!PQconsumeInput(l->conn) || PQstatus(l->conn) != CONNECTION_OK)
        return SLIM_EIO;
    while ((n = PQnotifies(l->conn))) {
        fn(ud, n->relname, n->extra ? n->extra : "");
        PQfreemem(n);
    }
    return 0;
}

void listen_close(struct store_listen *l)
{
    if (!l)
        return;
    if (l->conn)
        PQfinish(l->conn);
    slim_free(l);
}
