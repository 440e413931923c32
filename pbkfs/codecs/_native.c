/*
 * pbkfs native page codecs.
 *
 * Hot per-page work of a mount: pglz decoding of stored page payloads, pglz
 * encoding (the same algorithm and default strategy as PostgreSQL, so the
 * output is a stream PostgreSQL and pg_probackup decode), and the PostgreSQL
 * data page checksum.  Pure-Python references live in pglz.py and
 * pagecheck.py; the tests hold both to identical results.
 *
 * Every routine is bounds-checked against its input (any byte string is
 * acceptable input) and runs without the GIL.  C99, no libraries.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------------
 * pglz decompression (format: control byte, 8 items LSB first; a set bit is
 * a 2-3 byte back-reference tag, a clear bit a literal byte).
 * ------------------------------------------------------------------------ */

typedef struct
{
    const char *reason;  /* NULL on success */
    Py_ssize_t in_pos;   /* input offset where the problem was found */
    Py_ssize_t out_pos;  /* output offset at that point */
    Py_ssize_t value;    /* offending offset, if any */
} decode_status;

static void
pglz_decode(const uint8_t *src, Py_ssize_t slen, uint8_t *dst, Py_ssize_t rawsize,
            decode_status *st)
{
    const uint8_t *sp = src;
    const uint8_t *const send = src + slen;
    uint8_t *dp = dst;
    uint8_t *const dend = dst + rawsize;

    st->reason = NULL;
    st->value = 0;
    while (sp < send && dp < dend)
    {
        unsigned int ctrl = *sp++;
        int item;

        for (item = 0; item < 8 && sp < send && dp < dend; item++, ctrl >>= 1)
        {
            if (ctrl & 1)
            {
                Py_ssize_t len, off;

                if (send - sp < 2)
                {
                    st->reason = "match tag runs past the end of the input";
                    goto fail;
                }
                len = (Py_ssize_t)(sp[0] & 0x0f) + 3;
                off = ((Py_ssize_t)(sp[0] & 0xf0) << 4) | sp[1];
                sp += 2;
                if (len == 18)
                {
                    if (sp >= send)
                    {
                        st->reason = "match length byte runs past the end of the input";
                        goto fail;
                    }
                    len += *sp++;
                }
                if (off == 0 || off > dp - dst)
                {
                    st->reason = off == 0 ? "match offset is zero"
                                          : "match offset points before the start of the output";
                    st->value = off;
                    goto fail;
                }
                if (len > dend - dp)
                    len = dend - dp;
                /*
                 * Forward byte-at-a-time semantics: the source repeats with
                 * period `off`, so copy non-overlapping chunks that double.
                 */
                while (off < len)
                {
                    memcpy(dp, dp - off, (size_t) off);
                    dp += off;
                    len -= off;
                    off += off;
                }
                memcpy(dp, dp - off, (size_t) len);
                dp += len;
            }
            else
                *dp++ = *sp++;
        }
    }
    if (dp != dend)
    {
        st->reason = "input ends before the output is complete";
        goto fail;
    }
    if (sp != send)
    {
        st->reason = "input has bytes left after the output is complete";
        goto fail;
    }
    return;
fail:
    st->in_pos = sp - src;
    st->out_pos = dp - dst;
}

static PyObject *
native_pglz_decompress(PyObject *self, PyObject *args)
{
    Py_buffer src;
    Py_ssize_t rawsize;
    PyObject *out;
    decode_status st;

    (void) self;
    if (!PyArg_ParseTuple(args, "y*n:pglz_decompress", &src, &rawsize))
        return NULL;
    if (rawsize < 0)
    {
        PyBuffer_Release(&src);
        PyErr_Format(PyExc_ValueError, "pglz: rawsize must be >= 0, got %zd", rawsize);
        return NULL;
    }
    out = PyBytes_FromStringAndSize(NULL, rawsize);
    if (out == NULL)
    {
        PyBuffer_Release(&src);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    pglz_decode((const uint8_t *) src.buf, src.len, (uint8_t *) PyBytes_AS_STRING(out), rawsize,
                &st);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    if (st.reason != NULL)
    {
        Py_DECREF(out);
        if (st.value)
            PyErr_Format(PyExc_ValueError,
                         "pglz: %s (offset %zd at input byte %zd, output byte %zd of %zd)",
                         st.reason, st.value, st.in_pos, st.out_pos, rawsize);
        else
            PyErr_Format(PyExc_ValueError,
                         "pglz: %s (input byte %zd of %zd, output byte %zd of %zd)", st.reason,
                         st.in_pos, src.len, st.out_pos, rawsize);
        return NULL;
    }
    return out;
}

/* ------------------------------------------------------------------------
 * pglz compression: PostgreSQL's algorithm.  History = the last 4096 input
 * positions, chained per hash of the next 4 bytes (newest first); a lookup
 * walks the chain while the offset fits a tag (< 0x0fff), lowering the
 * "good enough" length by match_size_drop percent per step.
 * ------------------------------------------------------------------------ */

#define PGLZ_MAX_MATCH 273
#define PGLZ_HISTORY_SIZE 4096
#define PGLZ_MAX_HASH 8192

typedef struct
{
    int32_t min_input_size;
    int32_t max_input_size;
    int32_t min_comp_rate;
    int32_t first_success_by;
    int32_t match_size_good;
    int32_t match_size_drop;
} pglz_strategy;

static const pglz_strategy strategy_default = {32, INT_MAX, 25, 1024, 128, 10};
static const pglz_strategy strategy_always = {0, INT_MAX, 0, INT_MAX, 128, 6};

typedef struct
{
    int32_t head[PGLZ_MAX_HASH];      /* newest position per hash, -1 = none */
    int32_t prev[PGLZ_HISTORY_SIZE];  /* prev[p % 4096]: older position, same hash */
} pglz_history;

/*
 * Hash of the 4 bytes at s (1 byte near the end).  PostgreSQL computes it on
 * `char`, which is signed on x86-64; the sign extension changes the bucket,
 * and with it which matches are found, so reproduce it exactly.
 */
/* a byte as a sign-extended `char`, in well-defined unsigned arithmetic */
#define SCHAR(b) (((unsigned int) (b) ^ 0x80u) - 0x80u)

static inline int
hist_idx(const uint8_t *s, const uint8_t *e, int mask)
{
    if (e - s < 4)
        return (int) (SCHAR(s[0]) & (unsigned int) mask);
    return (int) (((SCHAR(s[0]) << 6) ^ (SCHAR(s[1]) << 4) ^ (SCHAR(s[2]) << 2) ^ SCHAR(s[3])) &
                  (unsigned int) mask);
}

static inline void
hist_add(pglz_history *h, const uint8_t *src, int32_t pos, const uint8_t *end, int mask)
{
    int idx = hist_idx(src + pos, end, mask);

    h->prev[pos & (PGLZ_HISTORY_SIZE - 1)] = h->head[idx];
    h->head[idx] = pos;
}

static inline int
find_match(const pglz_history *h, const uint8_t *src, int32_t pos, const uint8_t *end, int *lenp,
           int *offp, int good_match, int good_drop, int mask)
{
    const uint8_t *input = src + pos;
    const Py_ssize_t avail = end - input;
    int32_t cand = h->head[hist_idx(input, end, mask)];
    int len = 0;
    int off = 0;

    while (cand >= 0)
    {
        int thisoff = pos - cand;

        if (thisoff >= 0x0fff)
            break;
        /* Only a match longer than `len` can win; it needs byte `len` equal. */
        if (len < PGLZ_MAX_MATCH && avail > len && src[cand + len] == input[len])
        {
            const uint8_t *hp = src + cand;
            Py_ssize_t limit = avail < PGLZ_MAX_MATCH ? avail : PGLZ_MAX_MATCH;
            int thislen = 0;

            while (thislen < limit && hp[thislen] == input[thislen])
                thislen++;
            if (thislen > len)
            {
                len = thislen;
                off = thisoff;
            }
        }
        cand = h->prev[cand & (PGLZ_HISTORY_SIZE - 1)];
        if (cand >= 0)
        {
            if (len >= good_match)
                break;
            good_match -= (good_match * good_drop) / 100;
        }
    }
    if (len > 2)
    {
        *lenp = len;
        *offp = off;
        return 1;
    }
    return 0;
}

/* Bytes written to dst (capacity PGLZ result_max + 4), or -1 = not compressible. */
static int32_t
pglz_encode(const uint8_t *src, int32_t slen, uint8_t *dst, const pglz_strategy *strategy,
            pglz_history *h)
{
    const uint8_t *const end = src + slen;
    int32_t pos = 0;
    int32_t bp = 0;
    int32_t ctrlp = -1; /* index of the open control byte; -1 = none yet */
    unsigned int ctrlb = 0;
    unsigned int ctrl = 0;
    int found_match = 0;
    int good_match, good_drop, need_rate, hashsz, mask, i;
    int32_t result_max;

    if (strategy->match_size_good <= 0 || slen < strategy->min_input_size ||
        slen > strategy->max_input_size)
        return -1;
    good_match = strategy->match_size_good;
    if (good_match > PGLZ_MAX_MATCH)
        good_match = PGLZ_MAX_MATCH;
    else if (good_match < 17)
        good_match = 17;
    good_drop = strategy->match_size_drop < 0 ? 0
                : strategy->match_size_drop > 100 ? 100
                                                  : strategy->match_size_drop;
    need_rate = strategy->min_comp_rate < 0 ? 0
                : strategy->min_comp_rate > 99 ? 99
                                               : strategy->min_comp_rate;
    if (slen > INT_MAX / 100)
        result_max = (slen / 100) * (100 - need_rate);
    else
        result_max = (slen * (100 - need_rate)) / 100;

    if (slen < 128)
        hashsz = 512;
    else if (slen < 256)
        hashsz = 1024;
    else if (slen < 512)
        hashsz = 2048;
    else if (slen < 1024)
        hashsz = 4096;
    else
        hashsz = 8192;
    mask = hashsz - 1;
    for (i = 0; i < hashsz; i++)
        h->head[i] = -1;

    while (pos < slen)
    {
        int match_len, match_off;

        if (bp >= result_max)
            return -1;
        if (!found_match && bp >= strategy->first_success_by)
            return -1;

        /* open a new control byte when the current one is full */
        if ((ctrl & 0xff) == 0)
        {
            if (ctrlp >= 0)
                dst[ctrlp] = (uint8_t) ctrlb;
            ctrlp = bp++;
            ctrlb = 0;
            ctrl = 1;
        }
        if (find_match(h, src, pos, end, &match_len, &match_off, good_match, good_drop, mask))
        {
            ctrlb |= ctrl;
            ctrl <<= 1;
            if (match_len > 17)
            {
                dst[bp] = (uint8_t) (((match_off & 0xf00) >> 4) | 0x0f);
                dst[bp + 1] = (uint8_t) (match_off & 0xff);
                dst[bp + 2] = (uint8_t) (match_len - 18);
                bp += 3;
            }
            else
            {
                dst[bp] = (uint8_t) (((match_off & 0xf00) >> 4) | (match_len - 3));
                dst[bp + 1] = (uint8_t) (match_off & 0xff);
                bp += 2;
            }
            while (match_len--)
                hist_add(h, src, pos++, end, mask);
            found_match = 1;
        }
        else
        {
            dst[bp++] = src[pos];
            ctrl <<= 1;
            hist_add(h, src, pos++, end, mask);
        }
    }
    if (ctrlp >= 0)
        dst[ctrlp] = (uint8_t) ctrlb;
    if (bp >= result_max)
        return -1;
    return bp;
}

static PyObject *
native_pglz_compress(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"src", "always", NULL};
    Py_buffer src;
    int always = 0;
    const pglz_strategy *strategy;
    pglz_history *hist;
    PyObject *out;
    int32_t slen, cap, n;

    (void) self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|$p:pglz_compress", kwlist, &src, &always))
        return NULL;
    strategy = always ? &strategy_always : &strategy_default;
    if (src.len > (Py_ssize_t) strategy->max_input_size || src.len < strategy->min_input_size)
    {
        PyBuffer_Release(&src);
        Py_RETURN_NONE;
    }
    slen = (int32_t) src.len;
    /* the encoder checks its size once per item, an item is at most 4 bytes */
    cap = slen > INT_MAX - 8 ? INT_MAX : slen + 8;
    out = PyBytes_FromStringAndSize(NULL, cap);
    hist = (pglz_history *) PyMem_RawMalloc(sizeof(pglz_history));
    if (out == NULL || hist == NULL)
    {
        Py_XDECREF(out);
        PyMem_RawFree(hist);
        PyBuffer_Release(&src);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    n = pglz_encode((const uint8_t *) src.buf, slen, (uint8_t *) PyBytes_AS_STRING(out), strategy,
                    hist);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(hist);
    PyBuffer_Release(&src);
    if (n < 0)
    {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    if (_PyBytes_Resize(&out, n) < 0)
        return NULL;
    return out;
}

/* ------------------------------------------------------------------------
 * PostgreSQL data page checksum (pg_checksum_page): 32 parallel FNV-1a-like
 * lanes over the page as 32-bit words, pd_checksum counted as zero, then
 * mixed with the absolute block number and reduced to 1..65535.
 * ------------------------------------------------------------------------ */

#define BLCKSZ 8192
#define N_SUMS 32
#define FNV_PRIME 16777619u

static const uint32_t checksum_base[N_SUMS] = {
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2,
    0x83E13D2C, 0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C,
    0xF718902A, 0x0B1C9CDB, 0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979,
    0xCCA6C0B2, 0x304A0979, 0x85AA43D4, 0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E,
    0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756};

#define CHECKSUM_COMP(sum, value)                      \
    do                                                 \
    {                                                  \
        uint32_t tmp_ = (sum) ^ (value);               \
        (sum) = tmp_ * FNV_PRIME ^ (tmp_ >> 17);       \
    } while (0)

static inline uint32_t
load_le32(const uint8_t *p)
{
    return (uint32_t) p[0] | ((uint32_t) p[1] << 8) | ((uint32_t) p[2] << 16) |
           ((uint32_t) p[3] << 24);
}

static uint16_t
page_checksum(const uint8_t *page, uint32_t blkno)
{
    uint32_t sums[N_SUMS];
    uint32_t words[N_SUMS];
    uint32_t result = 0;
    int i, j;

    memcpy(sums, checksum_base, sizeof(sums));
    for (i = 0; i < BLCKSZ / (4 * N_SUMS); i++)
    {
        const uint8_t *row = page + (size_t) i * 4 * N_SUMS;

        for (j = 0; j < N_SUMS; j++)
            words[j] = load_le32(row + 4 * j);
        if (i == 0)
            words[2] &= 0xFFFF0000u; /* pd_checksum (bytes 8..9) counts as zero */
        for (j = 0; j < N_SUMS; j++)
            CHECKSUM_COMP(sums[j], words[j]);
    }
    for (i = 0; i < 2; i++)
        for (j = 0; j < N_SUMS; j++)
            CHECKSUM_COMP(sums[j], 0);
    for (j = 0; j < N_SUMS; j++)
        result ^= sums[j];
    result ^= blkno;
    return (uint16_t) ((result % 65535) + 1);
}

static PyObject *
native_page_checksum(PyObject *self, PyObject *args)
{
    Py_buffer page;
    PyObject *blk_obj;
    unsigned long long blkno;
    uint16_t sum;

    (void) self;
    if (!PyArg_ParseTuple(args, "y*O!:page_checksum", &page, &PyLong_Type, &blk_obj))
        return NULL;
    if (page.len != BLCKSZ)
    {
        PyErr_Format(PyExc_ValueError, "page_checksum: page has %zd bytes, expected %d", page.len,
                     BLCKSZ);
        PyBuffer_Release(&page);
        return NULL;
    }
    blkno = PyLong_AsUnsignedLongLong(blk_obj);
    if (blkno == (unsigned long long) -1 && PyErr_Occurred())
    {
        PyErr_Clear();
        blkno = 0x100000000ULL; /* force the range error below */
    }
    if (blkno > 0xFFFFFFFFULL)
    {
        PyBuffer_Release(&page);
        PyErr_SetString(PyExc_ValueError, "page_checksum: blkno must be in 0..4294967295");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    sum = page_checksum((const uint8_t *) page.buf, (uint32_t) blkno);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&page);
    return PyLong_FromLong(sum);
}

/* ------------------------------------------------------------------------ */

static PyMethodDef native_methods[] = {
    {"pglz_decompress", native_pglz_decompress, METH_VARARGS,
     "pglz_decompress(src, rawsize) -> bytes\n\nDecode a header-less pglz stream to exactly "
     "rawsize bytes; ValueError on any malformed input."},
    {"pglz_compress", (PyCFunction) (void (*)(void)) native_pglz_compress,
     METH_VARARGS | METH_KEYWORDS,
     "pglz_compress(src, *, always=False) -> bytes | None\n\nPostgreSQL's pglz with "
     "PGLZ_strategy_default (always=True: PGLZ_strategy_always, as pg_probackup uses); None "
     "when PostgreSQL's pglz_compress would fail."},
    {"page_checksum", native_page_checksum, METH_VARARGS,
     "page_checksum(page, blkno) -> int\n\nPostgreSQL's pg_checksum_page of an 8192-byte page."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "_native", "pbkfs native page codecs (pglz, page checksum)", -1,
    native_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    return PyModule_Create(&native_module);
}
