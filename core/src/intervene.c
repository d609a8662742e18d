/*
 * intervene.c: the built-in interventions (zero, set, scale, add, patch,
 * mean), applied in C to the selected elements of a hook point's
 * activation, so that sweeps over many ablations never call back into Lua.
 *
 * Every activation is seen as [rows, positions, heads, index]:
 *   [B, T, X]        positions = T, heads = 1, index = X (d_model, d_mlp, 1)
 *   [B, T, H, X]     q, k, v, z (X = d_head) and result (X = d_model)
 *   [B, H, T, T]     attn_scores, pattern: positions = query, index = key
 */
#include "model_internal.h"

#include <stdlib.h>

typedef struct layout {
    int64_t rows, row_stride;
    int64_t npos, spos;
    int64_t nhead, shead;
    int64_t nidx;
} layout;

static layout layout_of(const lt_model *m, int point, const lt_view *v) {
    layout L = {.rows = v->shape[0], .nhead = 1, .shead = 0};
    int kind = lt_hook_kind(m, point);
    if (kind == LT_HOOK_ATTN_SCORES || kind == LT_HOOK_PATTERN) {
        L.nhead = v->shape[1]; L.npos = v->shape[2]; L.nidx = v->shape[3];
        L.spos = L.nidx; L.shead = L.npos * L.nidx;
    } else if (v->ndim == 4) {
        L.npos = v->shape[1]; L.nhead = v->shape[2]; L.nidx = v->shape[3];
        L.shead = L.nidx; L.spos = L.nhead * L.nidx;
    } else {
        L.npos = v->shape[1]; L.nidx = v->shape[2]; L.spos = L.nidx;
    }
    L.row_stride = L.npos * L.nhead * L.nidx;
    return L;
}

/* Resolves a selection (NULL = everything) into a list of indices in
 * [0, n), negative entries counting from the end when allow_negative. */
static int resolve(const int32_t *sel, int nsel, int64_t n, int allow_negative, const char *what, const char *point,
                   int64_t **out, int64_t *count) {
    int64_t k = sel ? nsel : n;
    int64_t *idx = malloc((size_t)(k ? k : 1) * sizeof *idx);
    if (!idx) return lt_fail("out of memory");
    for (int64_t i = 0; i < k; i++) {
        int64_t v = sel ? sel[i] : i;
        if (allow_negative && v < 0) v += n;
        if (v < 0 || v >= n) {
            free(idx);
            return lt_fail("%s: %s %lld out of range (size %lld)", point, what, (long long)(sel ? sel[i] : i), (long long)n);
        }
        idx[i] = v;
    }
    *out = idx;
    *count = k;
    return LT_OK;
}

int lt_intervention_apply(const lt_model *m, int point, const lt_intervention *iv, lt_view *act) {
    const char *name = lt_hook_name(m, point);
    layout L = layout_of(m, point, act);
    /* -1 is "every row"; other negative rows are refused rather than read
     * as every row (positions count from the end, rows do not) */
    if (iv->batch_row < -1) return lt_fail("%s: batch row %d is negative (-1 means every row)", name, iv->batch_row);
    if (iv->batch_row >= L.rows) return lt_fail("%s: batch row %d out of range (batch of %lld)", name, iv->batch_row, (long long)L.rows);
    if (iv->op == LT_IV_PATCH && iv->src_rows != 1 && iv->src_rows != L.rows)
        return lt_fail("%s: patch source has %d rows, the run has %lld", name, iv->src_rows, (long long)L.rows);
    if (iv->op == LT_IV_ADD && iv->vec && iv->vec_len != L.nidx)
        return lt_fail("%s: vector of length %d does not match the last dimension (%lld)", name, iv->vec_len, (long long)L.nidx);

    int64_t *pos = NULL, *heads = NULL, *idx = NULL, npos, nheads, nidx;
    int rc = LT_ERR;
    if (resolve(iv->positions, iv->n_positions, L.npos, 1, "position", name, &pos, &npos)) goto done;
    if (resolve(iv->heads, iv->n_heads, L.nhead, 0, "head", name, &heads, &nheads)) goto done;
    if (resolve(iv->indices, iv->n_indices, L.nidx, 0, "index", name, &idx, &nidx)) goto done;

    int64_t r0 = iv->batch_row >= 0 ? iv->batch_row : 0, r1 = iv->batch_row >= 0 ? iv->batch_row + 1 : L.rows;
    for (int64_t b = r0; b < r1; b++)
        for (int64_t pi = 0; pi < npos; pi++)
            for (int64_t hi = 0; hi < nheads; hi++) {
                int64_t p = pos[pi], h = heads[hi];
                int64_t in_row = p * L.spos + h * L.shead;
                float *x = act->data + b * L.row_stride + in_row;
                const float *src = NULL;
                if (iv->op == LT_IV_PATCH) src = iv->src + (iv->src_rows > 1 ? b * L.row_stride : 0) + in_row;
                else if (iv->op == LT_IV_MEAN) src = iv->src + (iv->src_per_position ? in_row : h * L.nidx);
                for (int64_t ii = 0; ii < nidx; ii++) {
                    int64_t i = idx[ii];
                    switch (iv->op) {
                    case LT_IV_ZERO: x[i] = 0.0f; break;
                    case LT_IV_SET: x[i] = iv->value; break;
                    case LT_IV_SCALE: x[i] *= iv->value; break;
                    case LT_IV_ADD: x[i] += iv->vec ? iv->vec[i] : iv->value; break;
                    default: x[i] = src[i];
                    }
                }
            }
    rc = LT_OK;
done:
    free(pos);
    free(heads);
    free(idx);
    return rc;
}
