/*
 * train.c: training a model with AdamW on next-token cross-entropy:
 * forward, loss and its gradient, backward, gradient clipping by global
 * norm, and the AdamW update (decoupled weight decay on matrices only).
 * Deterministic for a given data order and thread count: every reduction
 * runs in a fixed order.
 */
#include "model_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct lt_trainer {
    lt_model *m;
    lt_run *r;
    lt_adamw_opts o;
    float *mom1, *mom2;        /* [n_params] Adam moments */
    unsigned char *decay;      /* [n_params] 1 where weight decay applies */
    float *dlogits;            /* [B, T, V] */
    size_t dlogits_cap;
    int step;
};

void lt_adamw_update(float *param, const float *grad, float *m1, float *m2, size_t n, float lr, const lt_adamw_opts *o,
                     const unsigned char *decay, int step) {
    float c1 = 1.0f - powf(o->beta1, (float)step), c2 = 1.0f - powf(o->beta2, (float)step);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = grad[i];
        m1[i] = o->beta1 * m1[i] + (1.0f - o->beta1) * g;
        m2[i] = o->beta2 * m2[i] + (1.0f - o->beta2) * g * g;
        float mhat = m1[i] / c1, vhat = m2[i] / c2;
        float wd = (!decay || decay[i]) ? o->weight_decay * param[i] : 0.0f;
        param[i] -= lr * (mhat / (sqrtf(vhat) + o->eps) + wd);
    }
}

float lt_lr_schedule(int step, int warmup, int total, float max_lr, float min_lr) {
    if (step < warmup) return max_lr * (float)(step + 1) / (float)warmup;
    if (step >= total) return min_lr;
    double progress = (double)(step - warmup) / (double)(total - warmup > 0 ? total - warmup : 1);
    return min_lr + (float)(0.5 * (1.0 + cos(3.141592653589793 * progress))) * (max_lr - min_lr);
}

int lt_trainer_new(lt_model *m, const lt_adamw_opts *o, lt_trainer **out) {
    *out = NULL;
    if (m->unembed_w != m->wte) return lt_fail("training needs the tied unembedding (load without weight processing)");
    if (!(o->beta1 >= 0 && o->beta1 < 1 && o->beta2 >= 0 && o->beta2 < 1 && o->eps > 0 && o->weight_decay >= 0))
        return lt_fail("trainer: AdamW needs 0 <= beta1, beta2 < 1, eps > 0, weight_decay >= 0");
    lt_trainer *t = calloc(1, sizeof *t);
    if (!t) return lt_fail("out of memory");
    t->m = m;
    t->o = *o;
    t->mom1 = lt_alloc(m->n_params);
    t->mom2 = lt_alloc(m->n_params);
    t->decay = calloc(m->n_params, 1);
    if (!t->mom1 || !t->mom2 || !t->decay || lt_run_new(m, &t->r)) {
        lt_trainer_free(t);
        return lt_fail("out of memory");
    }
    /* decay matrices (embeddings and weights), not biases or LayerNorms */
    for (int i = 0; i < m->n_table; i++)
        if (m->table[i].ndim == 2)
            memset(t->decay + (m->table[i].data - m->params), 1, (size_t)(m->table[i].shape[0] * m->table[i].shape[1]));
    lt_run_keep_activations(t->r, 1);
    *out = t;
    return LT_OK;
}

void lt_trainer_free(lt_trainer *t) {
    if (!t) return;
    lt_run_free(t->r);
    lt_free(t->mom1);
    lt_free(t->mom2);
    lt_free(t->dlogits);
    free(t->decay);
    free(t);
}

int lt_trainer_steps(const lt_trainer *t) { return t->step; }

/* Positions that count in the loss: mask bytes set, a row's last excluded. */
static int loss_count(const uint8_t *mask, int B, int T) {
    int count = 0;
    for (int n = 0; n < B * T; n++) count += n % T != T - 1 && (!mask || mask[n]);
    return count;
}

/* Mean next-token cross-entropy of logits [B, T] x V and its gradient, over
 * the count positions of loss_count. Returns NAN when memory runs out. */
static double ce_loss_grad(const float *logits, float *dlogits, const int32_t *ids, const uint8_t *mask, int B, int T,
                           int V, int count) {
    memset(dlogits, 0, (size_t)B * T * V * sizeof(float));
    /* per-row losses summed in a fixed order afterwards for determinism */
    double *row_loss = malloc((size_t)B * T * sizeof *row_loss);
    if (!row_loss) return NAN;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < B * T; n++) {
        int t = n % T;
        row_loss[n] = 0;
        if (t == T - 1 || (mask && !mask[n])) continue;
        const float *row = logits + (size_t)n * V;
        float *g = dlogits + (size_t)n * V;
        float mx = row[0];
        for (int v = 1; v < V; v++) if (row[v] > mx) mx = row[v];
        /* one exp per logit: g holds exp(row - mx) until it is scaled */
        double sum = 0;
        for (int v = 0; v < V; v++) {
            g[v] = expf(row[v] - mx);
            sum += g[v];
        }
        int target = ids[n + 1];
        row_loss[n] = mx + log(sum) - row[target];
        float scale = (float)(1.0 / (sum * count));
        for (int v = 0; v < V; v++) g[v] *= scale;
        g[target] -= 1.0f / (float)count;
    }
    double total = 0;
    for (int n = 0; n < B * T; n++) total += row_loss[n];
    free(row_loss);
    return total / count;
}

int lt_trainer_step(lt_trainer *t, const int32_t *ids, int B, int T, float lr, double *loss, double *grad_norm) {
    return lt_trainer_step_masked(t, ids, NULL, B, T, lr, loss, grad_norm);
}

int lt_trainer_step_masked(lt_trainer *t, const int32_t *ids, const uint8_t *mask, int B, int T, float lr, double *loss,
                           double *grad_norm) {
    lt_model *m = t->m;
    int V = m->cfg.d_vocab;
    if (T < 2) return lt_fail("training needs sequences of at least two tokens");
    int count = loss_count(mask, B, T);
    if (count == 0) return lt_fail("training: the loss mask selects no position (a row's last position never counts)");
    size_t need = (size_t)B * T * V;
    if (need > t->dlogits_cap) {
        lt_free(t->dlogits);
        t->dlogits_cap = 0;
        if (!(t->dlogits = lt_alloc(need))) return LT_ERR;
        t->dlogits_cap = need;
    }
    float *logits;
    if (lt_forward(t->r, ids, B, T, &logits)) return LT_ERR;
    double l = ce_loss_grad(logits, t->dlogits, ids, mask, B, T, V, count);
    if (l != l) return lt_fail("training: loss is not a number (diverged?)");
    lt_backward_opts bo = {0, -1, -1, -1, -1, -1, 1};
    lt_run_zero_param_grads(t->r);
    if (lt_backward(t->r, t->dlogits, NULL, 0, &bo)) return LT_ERR;
    float *g = t->r->param_grads;
    double sq = 0;
    for (size_t i = 0; i < m->n_params; i++) sq += (double)g[i] * g[i];
    double norm = sqrt(sq);
    if (t->o.grad_clip > 0 && norm > t->o.grad_clip) {
        float s = (float)(t->o.grad_clip / norm);
        for (size_t i = 0; i < m->n_params; i++) g[i] *= s;
    }
    t->step++;
    lt_adamw_update(m->params, g, t->mom1, t->mom2, m->n_params, lr, &t->o, t->decay, t->step);
    if (loss) *loss = l;
    if (grad_norm) *grad_norm = norm;
    return LT_OK;
}

int lt_trainer_save_state(const lt_trainer *t, const char *path) {
    lt_st_writer *w;
    if (lt_st_writer_new(&w)) return LT_ERR;
    int64_t n = (int64_t)t->m->n_params;
    char step[32];
    snprintf(step, sizeof step, "%d", t->step);
    int rc = lt_st_writer_add(w, "adam.m", LT_DTYPE_F32, 1, &n, t->mom1);
    if (!rc) rc = lt_st_writer_add(w, "adam.v", LT_DTYPE_F32, 1, &n, t->mom2);
    if (!rc) rc = lt_st_writer_metadata(w, "step", step);
    if (!rc) rc = lt_st_writer_save(w, path);
    lt_st_writer_free(w);
    return rc;
}

int lt_trainer_load_state(lt_trainer *t, const char *path) {
    lt_safetensors *st;
    if (lt_st_open(path, &st)) return LT_ERR;
    lt_st_tensor a, b;
    int rc = lt_st_find(st, "adam.m", &a);
    if (!rc) rc = lt_st_find(st, "adam.v", &b);
    const char *step = lt_st_metadata(st, "step");
    if (!rc && !step) rc = lt_fail("%s: no step in the metadata", path);
    if (!rc) rc = lt_st_to_f32(&a, t->mom1, (int64_t)t->m->n_params);
    if (!rc) rc = lt_st_to_f32(&b, t->mom2, (int64_t)t->m->n_params);
    if (!rc) t->step = atoi(step);
    lt_st_close(st);
    if (rc) return lt_fail_context("optimizer state %s", path);
    return LT_OK;
}
