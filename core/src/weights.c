/*
 * weights.c: TransformerLens's weight processing (fold_ln,
 * center_writing_weights, center_unembed, fold_value_biases), applied once
 * at load in that order. Each step leaves the model's log-probabilities
 * unchanged (up to float rounding); see docs/hooks.md.
 */
#include "model_internal.h"

#include <string.h>

/* Folds a LayerNorm's weight and bias into the matrix that reads its
 * output: w [C, O] (rows ldw apart), bias [O]. Then centres each column of
 * w over d_model: the normalized input has zero mean, so that changes
 * nothing but makes the weights easier to read. */
static void fold_into_reader(float *w, float *bias, int C, int O, const float *ln_w, const float *ln_b) {
    for (int o = 0; o < O; o++) {
        double add = 0;
        for (int i = 0; i < C; i++) add += (double)ln_b[i] * w[(size_t)i * O + o];
        bias[o] += (float)add;
    }
    for (int i = 0; i < C; i++)
        for (int o = 0; o < O; o++) w[(size_t)i * O + o] *= ln_w[i];
    for (int o = 0; o < O; o++) {
        double mean = 0;
        for (int i = 0; i < C; i++) mean += w[(size_t)i * O + o];
        mean /= C;
        for (int i = 0; i < C; i++) w[(size_t)i * O + o] -= (float)mean;
    }
}

static void reset_ln(float *w, float *b, int C) {
    for (int i = 0; i < C; i++) { w[i] = 1.0f; b[i] = 0.0f; }
}

/* Subtracts from each of the rows vectors [rows, C] its mean over C. */
static void center_rows(float *x, int64_t rows, int C) {
    for (int64_t r = 0; r < rows; r++) {
        float *v = x + r * C;
        double mean = 0;
        for (int i = 0; i < C; i++) mean += v[i];
        mean /= C;
        for (int i = 0; i < C; i++) v[i] -= (float)mean;
    }
}

/* Gives the unembedding its own memory (it starts tied to wte). */
static int untie_unembed(lt_model *m) {
    size_t n = (size_t)m->cfg.d_vocab * m->cfg.n_embd;
    if (m->unembed_w == m->wte) {
        float *u = lt_alloc(n);
        if (!u) return LT_ERR;
        memcpy(u, m->wte, n * sizeof(float));
        m->unembed_w = u;
    }
    if (!m->unembed_b && !(m->unembed_b = lt_alloc((size_t)m->cfg.d_vocab))) return LT_ERR;
    return LT_OK;
}

int lt_weights_process(lt_model *m, const lt_load_opts *o) {
    const lt_config *c = &m->cfg;
    int C = c->n_embd, M = c->d_mlp, V = c->d_vocab;
    if (!(o->fold_ln || o->center_writing_weights || o->center_unembed || o->fold_value_biases)) return LT_OK;
    if (untie_unembed(m)) return LT_ERR;

    if (o->fold_ln) {
        for (int l = 0; l < c->n_layer; l++) {
            lt_block_params *p = &m->blocks[l];
            fold_into_reader(p->attn_w, p->attn_b, C, 3 * C, p->ln1_w, p->ln1_b);
            reset_ln(p->ln1_w, p->ln1_b, C);
            fold_into_reader(p->fc_w, p->fc_b, C, M, p->ln2_w, p->ln2_b);
            reset_ln(p->ln2_w, p->ln2_b, C);
        }
        /* unembed [V, C]: each vocabulary row reads the final LayerNorm */
        for (int v = 0; v < V; v++) {
            float *u = m->unembed_w + (size_t)v * C;
            double add = 0;
            for (int i = 0; i < C; i++) add += (double)m->lnf_b[i] * u[i];
            m->unembed_b[v] += (float)add;
            for (int i = 0; i < C; i++) u[i] *= m->lnf_w[i];
        }
        center_rows(m->unembed_w, V, C);
        reset_ln(m->lnf_w, m->lnf_b, C);
    }
    if (o->center_writing_weights) {
        center_rows(m->wte, V, C);
        center_rows(m->wpe, c->n_ctx, C);
        for (int l = 0; l < c->n_layer; l++) {
            lt_block_params *p = &m->blocks[l];
            center_rows(p->proj_w, C, C);
            center_rows(p->proj_b, 1, C);
            center_rows(p->out_w, M, C);
            center_rows(p->out_b, 1, C);
        }
    }
    if (o->center_unembed) {
        /* subtract the vocabulary mean of each d_model coordinate: every
         * logit at a position moves by the same constant */
        for (int i = 0; i < C; i++) {
            double mean = 0;
            for (int v = 0; v < V; v++) mean += m->unembed_w[(size_t)v * C + i];
            mean /= V;
            for (int v = 0; v < V; v++) m->unembed_w[(size_t)v * C + i] -= (float)mean;
        }
        double mean = 0;
        for (int v = 0; v < V; v++) mean += m->unembed_b[v];
        mean /= V;
        for (int v = 0; v < V; v++) m->unembed_b[v] -= (float)mean;
    }
    if (o->fold_value_biases) {
        /* b_O += b_V @ W_O, then b_V = 0: attention rows sum to 1, so the
         * value bias always reaches the output unchanged */
        for (int l = 0; l < c->n_layer; l++) {
            lt_block_params *p = &m->blocks[l];
            float *b_v = p->attn_b + 2 * C;
            for (int j = 0; j < C; j++) {
                double add = 0;
                for (int i = 0; i < C; i++) add += (double)b_v[i] * p->proj_w[(size_t)i * C + j];
                p->proj_b[j] += (float)add;
            }
            memset(b_v, 0, (size_t)C * sizeof(float));
        }
    }
    return LT_OK;
}
