/*
 * full_vfs.h - a disk that fills up, for the unit tests of storage/ and
 * the runner: a SQLite VFS over the default one whose writes to the WAL
 * fail with SQLITE_FULL while `disk_full` is set.  A WAL frame is
 * written when a transaction commits, so this fails exactly the commit
 * that a statement's last step performs; reads go through.  full_refused
 * counts the writes refused, so a test can tell a backoff (a few) from a
 * loop (thousands).  disk_full and the counter are atomics: the runner
 * writes from its loop thread while a test's timer flips the disk.
 * Include after util.h; one program uses it at a time (static state).
 */
#ifndef SLIM_TEST_FULL_VFS_H
#define SLIM_TEST_FULL_VFS_H

#include <stdatomic.h>
#include <sqlite3.h>

static sqlite3_vfs *real_vfs;
static sqlite3_vfs full_vfs;
static atomic_int disk_full;
static atomic_long full_refused;

struct full_file {
    sqlite3_file base;
    sqlite3_file *real;   /* right after this struct */
    int wal;
};

#define REAL(f) (((struct full_file *)(f))->real)
static int ff_close(sqlite3_file *f) { return REAL(f)->pMethods->xClose(REAL(f)); }
static int ff_read(sqlite3_file *f, void *b, int n, sqlite3_int64 o)
{ return REAL(f)->pMethods->xRead(REAL(f), b, n, o); }
static int ff_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 o)
{
    if (atomic_load(&disk_full) && ((struct full_file *)f)->wal) {
        atomic_fetch_add(&full_refused, 1);
        return SQLITE_FULL;
    }
    return REAL(f)->pMethods->xWrite(REAL(f), b, n, o);
}
static int ff_truncate(sqlite3_file *f, sqlite3_int64 n)
{ return REAL(f)->pMethods->xTruncate(REAL(f), n); }
static int ff_sync(sqlite3_file *f, int fl) { return REAL(f)->pMethods->xSync(REAL(f), fl); }
static int ff_size(sqlite3_file *f, sqlite3_int64 *n)
{ return REAL(f)->pMethods->xFileSize(REAL(f), n); }
static int ff_lock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xLock(REAL(f), l); }
static int ff_unlock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xUnlock(REAL(f), l); }
static int ff_reserved(sqlite3_file *f, int *r)
{ return REAL(f)->pMethods->xCheckReservedLock(REAL(f), r); }
static int ff_fcntl(sqlite3_file *f, int op, void *a)
{ return REAL(f)->pMethods->xFileControl(REAL(f), op, a); }
static int ff_sector(sqlite3_file *f) { return REAL(f)->pMethods->xSectorSize(REAL(f)); }
static int ff_dev(sqlite3_file *f) { return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f)); }
static int ff_shm_map(sqlite3_file *f, int pg, int sz, int ext, void volatile **pp)
{ return REAL(f)->pMethods->xShmMap(REAL(f), pg, sz, ext, pp); }
static int ff_shm_lock(sqlite3_file *f, int o, int n, int fl)
{ return REAL(f)->pMethods->xShmLock(REAL(f), o, n, fl); }
static void ff_shm_barrier(sqlite3_file *f) { REAL(f)->pMethods->xShmBarrier(REAL(f)); }
static int ff_shm_unmap(sqlite3_file *f, int del)
{ return REAL(f)->pMethods->xShmUnmap(REAL(f), del); }

static const sqlite3_io_methods full_methods = {
    2, ff_close, ff_read, ff_write, ff_truncate, ff_sync, ff_size, ff_lock, ff_unlock,
    ff_reserved, ff_fcntl, ff_sector, ff_dev, ff_shm_map, ff_shm_lock, ff_shm_barrier,
    ff_shm_unmap, NULL, NULL,
};

static int ff_open(sqlite3_vfs *v, const char *name, sqlite3_file *f, int flags, int *out)
{
    struct full_file *ff = (struct full_file *)f;
    int rc;
    (void)v;
    ff->real = (sqlite3_file *)(ff + 1);
    ff->wal = (flags & SQLITE_OPEN_WAL) != 0;
    rc = real_vfs->xOpen(real_vfs, name, ff->real, flags, out);
    f->pMethods = rc == SQLITE_OK && ff->real->pMethods ? &full_methods : NULL;
    return rc;
}

/* Makes the full VFS the default (for stores opened after), and back. */
static void full_vfs_on(void)
{
    sqlite3_vfs *dflt = sqlite3_vfs_find(NULL);
    /* still ours when a failed test never switched it off */
    if (dflt != &full_vfs)
        real_vfs = dflt;
    full_vfs = *real_vfs;
    full_vfs.zName = "slimd-test-full";
    full_vfs.szOsFile = (int)sizeof(struct full_file) + real_vfs->szOsFile;
    full_vfs.xOpen = ff_open;
    atomic_store(&disk_full, 0);
    atomic_store(&full_refused, 0);
    assert_int_equal(sqlite3_vfs_register(&full_vfs, 1), SQLITE_OK);
}

static void full_vfs_off(void)
{
    sqlite3_vfs_unregister(&full_vfs);
    /* SQLite picks any VFS as the default once it is gone: name ours */
    sqlite3_vfs_register(real_vfs, 1);
}

#endif
