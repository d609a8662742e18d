/*
 * test_train.c: the AdamW step against a hand computation, the learning
 * rate schedule, overfitting one fixed batch, bit-reproducibility, and
 * the loss mask of lt_trainer_step_masked.
 */
#include "check.h"

#include <stdint.h>

static void check_adamw(void) {
    float p[3] = {1.0f, -2.0f, 0.5f}, g[3] = {0.1f, -0.3f, 0.0f}, m1[3] = {0}, m2[3] = {0};
    unsigned char decay[3] = {1, 0, 1};
    lt_adamw_opts o = {.beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
    lt_adamw_update(p, g, m1, m2, 3, 0.01f, &o, decay, 1);
    /* step 1: m_hat = g, v_hat = g^2, so the update is lr (sign(g) + wd p) */
    CHECK(fabs(p[0] - (1.0 - 0.01 * (0.1 / (0.1 + 1e-8) + 0.1 * 1.0))) < 1e-6, "p0 %.8f", p[0]);
    CHECK(fabs(p[1] - (-2.0 - 0.01 * (-0.3 / (0.3 + 1e-8)))) < 1e-6, "p1 (no decay) %.8f", p[1]);
    CHECK(fabs(p[2] - (0.5 - 0.01 * 0.1 * 0.5)) < 1e-7, "p2 (zero gradient, decay only) %.8f", p[2]);
    /* step 2 with the same gradient, by hand in double */
    double mm = 0.9 * 0.1 * 0.1 + 0.1 * 0.1, vv = 0.95 * 0.05 * 0.01 + 0.05 * 0.01;
    double mh = mm / (1 - 0.81), vh = vv / (1 - 0.9025);
    double want = p[0] - 0.01 * (mh / (sqrt(vh) + 1e-8) + 0.1 * p[0]);
    lt_adamw_update(p, g, m1, m2, 3, 0.01f, &o, decay, 2);
    CHECK(fabs(p[0] - want) < 1e-6, "step 2: %.8f vs %.8f", p[0], want);

    CHECK(fabs(lt_lr_schedule(0, 10, 100, 1.0f, 0.1f) - 0.1f) < 1e-7, "warmup start");
    CHECK(fabs(lt_lr_schedule(9, 10, 100, 1.0f, 0.1f) - 1.0f) < 1e-7, "warmup end");
    CHECK(fabs(lt_lr_schedule(55, 10, 100, 1.0f, 0.1f) - 0.55f) < 1e-6, "cosine midpoint");
    CHECK(fabs(lt_lr_schedule(100, 10, 100, 1.0f, 0.1f) - 0.1f) < 1e-7, "end");
}

static const lt_config tiny = {.n_layer = 2, .n_head = 2, .n_embd = 16, .d_mlp = 64, .n_ctx = 16, .d_vocab = 23, .ln_eps = 1e-5f};

/* Trains a fresh tiny model for steps on a fixed batch; returns the final
 * loss and copies the parameters into out (n floats) when given. */
static double train(int steps, double *first, float *out, size_t n) {
    lt_model *m;
    lt_trainer *t;
    if (lt_model_random(&tiny, 3, &m)) return NAN;
    lt_adamw_opts o = {.beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.01f, .grad_clip = 1.0f};
    if (lt_trainer_new(m, &o, &t)) { lt_model_free(m); return NAN; }
    int32_t ids[4 * 12];
    for (int i = 0; i < 48; i++) ids[i] = (int32_t)((i * 7 + i / 12) % 23);
    double loss = NAN, norm;
    for (int s = 0; s < steps; s++) {
        if (lt_trainer_step(t, ids, 4, 12, lt_lr_schedule(s, 5, steps, 1e-2f, 1e-3f), &loss, &norm)) {
            fprintf(stderr, "%s\n", lt_last_error());
            break;
        }
        if (s == 0 && first) *first = loss;
    }
    if (out) {
        lt_view v;
        lt_model_param(m, "wte.weight", &v);
        memcpy(out, v.data, n * sizeof(float));
    }
    lt_trainer_free(t);
    lt_model_free(m);
    return loss;
}

/* The masked step: its loss is the mean cross-entropy over the masked
 * positions (computed here from a forward pass in double); an all-ones mask
 * is the unmasked step bit for bit; an empty mask fails and changes nothing. */
static void check_mask(void) {
    enum { B = 2, T = 6, V = 23 };
    lt_model *m[2];
    lt_trainer *t[2];
    lt_adamw_opts o = {.beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.01f, .grad_clip = 1.0f};
    for (int i = 0; i < 2; i++) {
        if (lt_model_random(&tiny, 5, &m[i]) || lt_trainer_new(m[i], &o, &t[i])) {
            CHECK(0, "setup: %s", lt_last_error());
            return;
        }
    }
    int32_t ids[B * T];
    for (int i = 0; i < B * T; i++) ids[i] = (int32_t)((i * 5 + 3) % V);
    uint8_t mask[B * T] = {0, 0, 1, 1, 0, 1, /* row 2 */ 1, 0, 0, 0, 1, 1};   /* last of each row never counts */

    /* the expected loss, from the model before the step */
    lt_run *r;
    float *logits;
    double want = 0;
    int count = 0;
    if (lt_run_new(m[0], &r) || lt_forward(r, ids, B, T, &logits)) {
        CHECK(0, "forward: %s", lt_last_error());
        return;
    }
    for (int n = 0; n < B * T; n++) {
        if (!mask[n] || n % T == T - 1) continue;
        const float *row = logits + (size_t)n * V;
        double mx = row[0], sum = 0;
        for (int v = 1; v < V; v++) if (row[v] > mx) mx = row[v];
        for (int v = 0; v < V; v++) sum += exp(row[v] - mx);
        want += mx + log(sum) - row[ids[n + 1]];
        count++;
    }
    want /= count;
    lt_run_free(r);

    double loss, norm;
    CHECK(lt_trainer_step_masked(t[0], ids, mask, B, T, 1e-2f, &loss, &norm) == LT_OK, "masked step: %s", lt_last_error());
    CHECK(fabs(loss - want) < 1e-5, "masked loss %.7f, by hand %.7f over %d positions", loss, want, count);

    /* all ones (the last position's byte set too) = no mask */
    lt_model *a, *b;
    lt_trainer *ta, *tb;
    uint8_t ones[B * T], zeros[B * T];
    memset(ones, 1, sizeof ones);
    memset(zeros, 0, sizeof zeros);
    zeros[T - 1] = 1;    /* a row's last position cannot make the mask non-empty */
    if (lt_model_random(&tiny, 6, &a) || lt_model_random(&tiny, 6, &b) || lt_trainer_new(a, &o, &ta) ||
        lt_trainer_new(b, &o, &tb)) {
        CHECK(0, "setup: %s", lt_last_error());
        return;
    }
    double la, lb;
    CHECK(lt_trainer_step(ta, ids, B, T, 1e-2f, &la, &norm) == LT_OK, "step: %s", lt_last_error());
    CHECK(lt_trainer_step_masked(tb, ids, ones, B, T, 1e-2f, &lb, &norm) == LT_OK, "step: %s", lt_last_error());
    size_t n_wte = (size_t)V * tiny.n_embd;
    lt_view va, vb;
    lt_model_param(a, "wte.weight", &va);
    lt_model_param(b, "wte.weight", &vb);
    CHECK(la == lb && memcmp(va.data, vb.data, n_wte * sizeof(float)) == 0,
          "an all-ones mask is the unmasked step (loss %.7f vs %.7f)", la, lb);

    /* empty: an error, and the model and the step count are unchanged */
    float *before = lt_alloc(n_wte);
    memcpy(before, vb.data, n_wte * sizeof(float));
    CHECK(lt_trainer_step_masked(tb, ids, zeros, B, T, 1e-2f, &lb, &norm) == LT_ERR, "an empty mask fails");
    CHECK(strstr(lt_last_error(), "mask") != NULL, "the error names the mask: %s", lt_last_error());
    CHECK(memcmp(before, vb.data, n_wte * sizeof(float)) == 0 && lt_trainer_steps(tb) == 1,
          "a failed step changes nothing");
    lt_free(before);
    for (int i = 0; i < 2; i++) {
        lt_trainer_free(t[i]);
        lt_model_free(m[i]);
    }
    lt_trainer_free(ta);
    lt_trainer_free(tb);
    lt_model_free(a);
    lt_model_free(b);
}

int main(void) {
    check_mask();
    check_adamw();
    double first;
    double last = train(150, &first, NULL, 0);
    printf("overfit one batch: loss %.4f -> %.4f\n", first, last);
    CHECK(first > 2.5 && last < 0.1, "loss falls from %.4f to %.4f", first, last);

    size_t n = 23 * 16;
    float *a = lt_alloc(n), *b = lt_alloc(n);
    train(20, NULL, a, n);
    train(20, NULL, b, n);
    CHECK(memcmp(a, b, n * sizeof(float)) == 0, "20 steps are bit-reproducible");
    lt_free(a);
    lt_free(b);
    return check_summary();
}
