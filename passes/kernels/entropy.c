/*
 * entropy.c - the third stage of Deep Compression (Han, Mao and Dally,
 * "Deep Compression", ICLR 2016, section 4): a tensor's stored positions
 * as gaps between them and its codes, both Huffman-coded, in one byte
 * stream (docs/artifact-format.md, "Entropy-coded tensors", has the
 * exact layout and a numpy decoder).
 *
 * Positions: the gap before each stored element (how many positions it
 * skips) is a symbol of gap_bits bits.  A gap of 2^gap_bits - 1 or more
 * is written as escape symbols E = 2^gap_bits - 1 (each skips E
 * positions and stores nothing), then the rest: Han et al.'s "filler
 * zero", except that an escape carries no code, so a cluster codebook
 * needs no zero entry.  gap_bits is chosen per tensor (1..8) for the
 * fewest bits; 0 means every position is stored (a dense tensor).
 * Codes: one symbol of code_bits (1, 2, 4, 8) per stored element, the
 * element's gap symbols first.  Both alphabets get a canonical Huffman
 * code (lengths 1..15, at most 2^bits symbols), whose lengths are the
 * only table stored: 4 bits a symbol.  Values that are not codes (fp16,
 * fp32: code_bits 0) are stored raw after the bit stream.
 *
 * Codes longer than 15 bits would need an alphabet with frequencies
 * beyond Fibonacci numbers; when that happens the counts are halved
 * (keeping every used symbol) until the code fits, which costs a
 * fraction of a bit in cases that are themselves rare.  Rejected: an
 * arithmetic coder (a few percent smaller on skewed gaps, but nothing
 * that a numpy reader decodes in a few lines), and a mask of one bit a
 * weight (what "sparse" stores without entropy: 1 bit a weight, where
 * a 10 % dense tensor's gaps take about 0.5).
 *
 * The decoder trusts nothing: every length, count and bit read is
 * checked against the buffer and the caller's n, so a fuzzer can feed
 * it anything (tests/fuzz/fuzz_entropy.c).
 */
#include <string.h>
#include "passes/kernels/kernels.h"

#define MAXLEN 15

/* ---- bits ----------------------------------------------------------------- */

struct bitw {
    uint8_t *p;       /* NULL: count only */
    uint64_t bits;
};

static void put_code(struct bitw *w, uint32_t code, int len)
{
    for (int i = len - 1; i >= 0; i--, w->bits++)
        if (w->p && (code >> i & 1))
            w->p[w->bits >> 3] |= (uint8_t)(1u << (w->bits & 7));
}

static int put_varint(uint8_t *p, uint64_t v)
{
    int n = 0;
    do {
        uint8_t b = v & 0x7f;
        v >>= 7;
        if (p)
            p[n] = (uint8_t)(b | (v ? 0x80 : 0));
        n++;
    } while (v);
    return n;
}

/* ---- Huffman code lengths ------------------------------------------------- */

/* Code lengths (0 = unused) for freq[0..n), every length <= MAXLEN.  A
 * lone used symbol gets length 1. */
static void huff_lengths(const uint64_t *freq_in, int n, uint8_t *len)
{
    uint64_t freq[256], w[512];
    int parent[512], alive[512];
    for (int i = 0; i < n; i++)
        freq[i] = freq_in[i];
    for (;;) {
        int nodes = 0, used = 0, maxl = 0;
        for (int i = 0; i < n; i++) {
            w[i] = freq[i];
            alive[i] = freq[i] > 0;
            parent[i] = -1;
            used += freq[i] > 0;
            len[i] = 0;
        }
        nodes = n;
        if (used == 0)
            return;
        if (used == 1) {
            for (int i = 0; i < n; i++)
                len[i] = freq[i] > 0;
            return;
        }
        for (int merges = 0; merges < used - 1; merges++) {
            int a = -1, b = -1;
            for (int i = 0; i < nodes; i++) {
                if (!alive[i])
                    continue;
                if (a < 0 || w[i] < w[a]) {
                    b = a;
                    a = i;
                } else if (b < 0 || w[i] < w[b]) {
                    b = i;
                }
            }
            w[nodes] = w[a] + w[b];
            alive[nodes] = 1;
            parent[nodes] = -1;
            alive[a] = alive[b] = 0;
            parent[a] = parent[b] = nodes;
            nodes++;
        }
        for (int i = 0; i < n; i++) {
            int d = 0;
            if (!freq[i])
                continue;
            for (int p = parent[i]; p >= 0; p = parent[p])
                d++;
            len[i] = (uint8_t)(d > 255 ? 255 : d);
            maxl = d > maxl ? d : maxl;
        }
        if (maxl <= MAXLEN)
            return;
        for (int i = 0; i < n; i++)
            if (freq[i])
                freq[i] = (freq[i] >> 1) | 1;
    }
}

/* Canonical codes from lengths (DEFLATE's rule: shorter codes first,
 * then by symbol). */
static void huff_codes(const uint8_t *len, int n, uint32_t *code)
{
    int count[MAXLEN + 1] = {0};
    uint32_t next[MAXLEN + 2], c = 0;
    for (int i = 0; i < n; i++)
        count[len[i]]++;
    count[0] = 0;
    for (int l = 1; l <= MAXLEN; l++) {
        c = (c + (uint32_t)count[l - 1]) << 1;
        next[l] = c;
    }
    for (int i = 0; i < n; i++)
        code[i] = len[i] ? next[len[i]]++ : 0;
}

static uint64_t huff_cost(const uint64_t *freq, const uint8_t *len, int n)
{
    uint64_t bits = 0;
    for (int i = 0; i < n; i++)
        bits += freq[i] * len[i];
    return bits;
}

/* ---- the encoder ---------------------------------------------------------- */

static int keep_bit(const uint8_t *keep, uint64_t i)
{
    return !keep || (keep[i >> 3] >> (i & 7) & 1);
}

static int valid_bits(int bits)
{
    return bits == 0 || bits == 1 || bits == 2 || bits == 4 || bits == 8;
}

int slim_entropy_encode(const struct slim_entropy_in *in, uint8_t **out, size_t *out_len,
                        struct slim_error *err)
{
    uint64_t gfreq[9][256], cfreq[256], m = 0, best = UINT64_MAX, stream_bits, hdr;
    uint8_t glen[256], clen[256], tlen[256];
    uint32_t gcode[256], ccode[256];
    int gb = 0, cb = in->code_bits, calpha = cb ? 1 << cb : 0;
    size_t table_bytes, total, at;
    uint8_t *buf;
    struct bitw bw;

    *out = NULL;
    *out_len = 0;
    if (!valid_bits(cb) || (cb == 0 && (in->value_bytes < 1 || in->value_bytes > 8)) ||
        (cb && in->value_bytes))
        return slim_error_set(err, SLIM_EINVAL, "entropy: bad code_bits %d / value_bytes %d",
                              cb, in->value_bytes);
    memset(gfreq, 0, sizeof gfreq);
    memset(cfreq, 0, sizeof cfreq);
    memset(glen, 0, sizeof glen);
    memset(clen, 0, sizeof clen);
    /* one pass: codes' counts, and the gap symbols' counts for every
     * gap_bits at once */
    {
        uint64_t gap = 0;
        for (uint64_t i = 0; i < in->n; i++) {
            if (!keep_bit(in->keep, i)) {
                gap++;
                continue;
            }
            if (in->keep)
                for (int b = 1; b <= 8; b++) {
                    uint64_t e = ((uint64_t)1 << b) - 1;
                    gfreq[b][e] += gap / e;
                    gfreq[b][gap % e]++;
                }
            if (cb)
                cfreq[in->codes[m] & (calpha - 1)]++;
            m++;
            gap = 0;
        }
    }
    if (cb)
        huff_lengths(cfreq, calpha, clen);
    if (in->keep) {
        for (int b = 1; b <= 8; b++) {
            int a = 1 << b;
            uint64_t cost;
            huff_lengths(gfreq[b], a, tlen);
            cost = huff_cost(gfreq[b], tlen, a) + 8 * (uint64_t)((a + 1) / 2);
            if (cost < best) {
                best = cost;
                gb = b;
                memcpy(glen, tlen, (size_t)a);
            }
        }
    }
    stream_bits = (gb ? huff_cost(gfreq[gb], glen, 1 << gb) : 0) + huff_cost(cfreq, clen, calpha);
    table_bytes = (gb ? (size_t)((1 << gb) + 1) / 2 : 0) + (size_t)(calpha + 1) / 2;
    hdr = 4 + (uint64_t)put_varint(NULL, in->n) + (uint64_t)put_varint(NULL, m) +
          (uint64_t)put_varint(NULL, (stream_bits + 7) / 8);
    total = (size_t)(hdr + table_bytes + (stream_bits + 7) / 8 +
                     (cb ? 0 : m * (uint64_t)in->value_bytes));
    if (!(buf = slim_aligned_alloc(total + 1)))
        return slim_error_set(err, SLIM_ENOMEM, "entropy: out of memory (%zu bytes)", total);
    memset(buf, 0, total + 1);
    buf[0] = SLIM_ENTROPY_VERSION;
    buf[1] = (uint8_t)cb;
    buf[2] = (uint8_t)gb;
    buf[3] = (uint8_t)(cb ? 0 : in->value_bytes);
    at = 4;
    at += (size_t)put_varint(buf + at, in->n);
    at += (size_t)put_varint(buf + at, m);
    at += (size_t)put_varint(buf + at, (stream_bits + 7) / 8);
    for (int s = 0; gb && s < (1 << gb); s++)
        buf[at + (size_t)s / 2] |= (uint8_t)(glen[s] << (4 * (s & 1)));
    at += gb ? (size_t)((1 << gb) + 1) / 2 : 0;
    for (int s = 0; s < calpha; s++)
        buf[at + (size_t)s / 2] |= (uint8_t)(clen[s] << (4 * (s & 1)));
    at += (size_t)(calpha + 1) / 2;
    if (gb)
        huff_codes(glen, 1 << gb, gcode);
    if (cb)
        huff_codes(clen, calpha, ccode);
    bw.p = buf + at;
    bw.bits = 0;
    {
        uint64_t gap = 0, k = 0, e = gb ? ((uint64_t)1 << gb) - 1 : 0;
        for (uint64_t i = 0; i < in->n; i++) {
            if (!keep_bit(in->keep, i)) {
                gap++;
                continue;
            }
            if (gb) {
                for (; gap >= e; gap -= e)
                    put_code(&bw, gcode[e], glen[e]);
                put_code(&bw, gcode[gap], glen[gap]);
            }
            if (cb) {
                int s = in->codes[k] & (calpha - 1);
                put_code(&bw, ccode[s], clen[s]);
            }
            k++;
            gap = 0;
        }
    }
    at += (size_t)((stream_bits + 7) / 8);
    if (!cb && m)
        memcpy(buf + at, in->values, (size_t)m * (size_t)in->value_bytes);
    *out = buf;
    *out_len = total;
    return 0;
}

/* ---- the decoder ---------------------------------------------------------- */

struct huff {
    int count[MAXLEN + 1];
    uint8_t sym[256];
};

static int get_varint(const uint8_t *p, size_t len, size_t *at, uint64_t *v)
{
    uint64_t r = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        uint8_t b;
        if (*at >= len)
            return -1;
        b = p[(*at)++];
        if (shift == 63 && (b & 0x7e))
            return -1;
        r |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = r;
            return 0;
        }
    }
    return -1;
}

/* Reads a table of n 4-bit lengths; 0 ok, -1 over-subscribed or
 * (with used symbols) one that cannot be decoded. */
static int huff_read(const uint8_t *tab, int n, struct huff *h, int *used)
{
    int offs[MAXLEN + 2], left = 1;
    memset(h->count, 0, sizeof h->count);
    *used = 0;
    for (int s = 0; s < n; s++) {
        int l = tab[s / 2] >> (4 * (s & 1)) & 15;
        h->count[l]++;
    }
    *used = n - h->count[0];
    h->count[0] = 0;
    for (int l = 1; l <= MAXLEN; l++) {
        left <<= 1;
        left -= h->count[l];
        if (left < 0)
            return -1;
    }
    offs[1] = 0;
    for (int l = 1; l <= MAXLEN; l++)
        offs[l + 1] = offs[l] + h->count[l];
    for (int s = 0; s < n; s++) {
        int l = tab[s / 2] >> (4 * (s & 1)) & 15;
        if (l)
            h->sym[offs[l]++] = (uint8_t)s;
    }
    return 0;
}

struct bitr {
    const uint8_t *p;
    uint64_t bits, at;
};

/* The next symbol, or -1 at the end of the stream or on a code that
 * the table does not have. */
static int huff_get(struct bitr *r, const struct huff *h)
{
    int code = 0, first = 0, index = 0;
    for (int l = 1; l <= MAXLEN; l++) {
        if (r->at >= r->bits)
            return -1;
        code |= r->p[r->at >> 3] >> (r->at & 7) & 1;
        r->at++;
        if (code - first < h->count[l])
            return h->sym[index + code - first];
        index += h->count[l];
        first += h->count[l];
        first <<= 1;
        code <<= 1;
    }
    return -1;
}

int slim_entropy_header(const uint8_t *buf, size_t len, struct slim_entropy_info *info,
                        struct slim_error *err)
{
    size_t at = 4;
    uint64_t nbytes;
    memset(info, 0, sizeof *info);
    if (len < 4)
        return slim_error_set(err, SLIM_EFORMAT, "entropy stream: %zu bytes, shorter than "
                              "its 4-byte header", len);
    if (buf[0] != SLIM_ENTROPY_VERSION)
        return slim_error_set(err, SLIM_EFORMAT, "entropy stream: version %d (this slimd "
                              "reads %d)", buf[0], SLIM_ENTROPY_VERSION);
    info->code_bits = buf[1];
    info->gap_bits = buf[2];
    info->value_bytes = buf[3];
    if (!valid_bits(info->code_bits) || info->gap_bits > 8 ||
        (info->code_bits ? info->value_bytes != 0
                         : (info->value_bytes < 1 || info->value_bytes > 8)))
        return slim_error_set(err, SLIM_EFORMAT, "entropy stream: bad header (code_bits %d, "
                              "gap_bits %d, value_bytes %d)", info->code_bits, info->gap_bits,
                              info->value_bytes);
    if (get_varint(buf, len, &at, &info->n) || get_varint(buf, len, &at, &info->m) ||
        get_varint(buf, len, &at, &nbytes))
        return slim_error_set(err, SLIM_EFORMAT, "entropy stream: truncated header");
    if (info->m > info->n || (!info->gap_bits && info->m != info->n))
        return slim_error_set(err, SLIM_EFORMAT, "entropy stream: %llu stored elements of "
                              "%llu positions", (unsigned long long)info->m,
                              (unsigned long long)info->n);
    info->table_at = at;
    at += info->gap_bits ? (size_t)((1 << info->gap_bits) + 1) / 2 : 0;
    at += info->code_bits ? (size_t)((1 << info->code_bits) + 1) / 2 : 0;
    if (at > len || nbytes > len - at)
        return slim_error_set(err, SLIM_EFORMAT, "entropy stream: truncated (%zu bytes, the "
                              "header asks for more)", len);
    info->stream_at = at;
    info->stream_bytes = nbytes;
    info->values_at = at + (size_t)nbytes;
    if (!info->code_bits) {
        if (info->m > (len - info->values_at) / info->value_bytes ||
            info->m * info->value_bytes != len - info->values_at)
            return slim_error_set(err, SLIM_EFORMAT, "entropy stream: %zu bytes of values "
                                  "for %llu elements of %d bytes", len - info->values_at,
                                  (unsigned long long)info->m, info->value_bytes);
    } else if (info->values_at != len) {
        return slim_error_set(err, SLIM_EFORMAT, "entropy stream: %zu bytes after its bit "
                              "stream", len - info->values_at);
    }
    return 0;
}

int slim_entropy_decode(const uint8_t *buf, size_t len, const struct slim_entropy_info *info,
                        uint64_t *pos, uint8_t *codes, struct slim_error *err)
{
    struct huff gh, ch;
    struct bitr r;
    int gused = 0, cused = 0, gb = info->gap_bits, cb = info->code_bits;
    const uint8_t *tab = buf + info->table_at;
    uint64_t cursor = 0, e = gb ? ((uint64_t)1 << gb) - 1 : 0;

    if (gb && huff_read(tab, 1 << gb, &gh, &gused))
        return slim_error_set(err, SLIM_EFORMAT, "entropy stream: the gap code's lengths are "
                              "over-subscribed");
    tab += gb ? ((1 << gb) + 1) / 2 : 0;
    if (cb && huff_read(tab, 1 << cb, &ch, &cused))
        return slim_error_set(err, SLIM_EFORMAT, "entropy stream: the code's lengths are "
                              "over-subscribed");
    if (info->m && ((gb && !gused) || (cb && !cused)))
        return slim_error_set(err, SLIM_EFORMAT, "entropy stream: %llu elements but an "
                              "empty code table", (unsigned long long)info->m);
    r.p = buf + info->stream_at;
    r.bits = info->stream_bytes * 8;
    r.at = 0;
    for (uint64_t k = 0; k < info->m; k++) {
        if (gb) {
            for (;;) {
                int s = huff_get(&r, &gh);
                if (s < 0)
                    goto bad;
                if ((uint64_t)s == e) {
                    if (info->n - cursor < e)
                        goto range;
                    cursor += e;
                    continue;
                }
                if ((uint64_t)s >= info->n - cursor)
                    goto range;
                cursor += (uint64_t)s;
                break;
            }
        } else if (cursor >= info->n) {
            goto range;
        }
        if (pos)
            pos[k] = cursor;
        cursor++;
        if (cb) {
            int s = huff_get(&r, &ch);
            if (s < 0)
                goto bad;
            if (codes)
                codes[k] = (uint8_t)s;
        }
    }
    /* what is left is padding to a whole byte */
    if (r.bits - r.at >= 8)
        return slim_error_set(err, SLIM_EFORMAT, "entropy stream: %llu bits left after the "
                              "last element", (unsigned long long)(r.bits - r.at));
    return 0;
bad:
    return slim_error_set(err, SLIM_EFORMAT, "entropy stream: truncated or invalid code at "
                          "bit %llu", (unsigned long long)r.at);
range:
    return slim_error_set(err, SLIM_EFORMAT, "entropy stream: a gap runs past the tensor's "
                          "%llu positions", (unsigned long long)info->n);
}
