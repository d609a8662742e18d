/*
 * test_backward.c: gradients of the logit difference against Hugging Face's
 * (tests/fixtures/hf-gpt2-tiny2/refs.safetensors, nothing detached), and
 * central finite differences in double precision on a tiny random model.
 */
#include "check.h"
#include "refs.h"

#include <stdint.h>

static const int targets[3][2] = {{5335, 1757}, {6342, 3576}, {718, 767}};

static void check_prompt(lt_model *m, int p) {
    int T, V = lt_model_config(m)->d_vocab;
    int32_t *ids = ref_ids(p, &T);
    lt_run *r;
    lt_run_new(m, &r);
    lt_run_keep_activations(r, 1);
    float *logits;
    CHECK_OK(lt_forward(r, ids, 1, T, &logits));
    float *dlogits = lt_alloc((size_t)T * V);
    dlogits[(size_t)(T - 1) * V + targets[p][0]] = 1.0f;
    dlogits[(size_t)(T - 1) * V + targets[p][1]] = -1.0f;
    CHECK_OK(lt_backward(r, dlogits, NULL, 0, NULL));
    static const char *pairs[][2] = {{"blocks.%d.mlp.hook_post", "mlp_post.%d.grad"}, {"blocks.%d.attn.hook_z", "attn_z.%d.grad"},
                                     {"blocks.%d.hook_resid_pre", "resid_pre.%d.grad"}};
    char hook[96], rk[96];
    for (int l = 0; l < 2; l++)
        for (int k = 0; k < 3; k++) {
            snprintf(hook, sizeof hook, pairs[k][0], l);
            snprintf(rk, sizeof rk, "p%d.", p);
            snprintf(rk + strlen(rk), sizeof rk - strlen(rk), pairs[k][1], l);
            lt_view g;
            CHECK_OK(lt_run_grad(r, lt_hook_find(m, hook), &g));
            int64_t n;
            float *want = ref(rk, &n);
            double scale = 0;
            for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs(want[i]));
            double d = check_max_abs_diff(g.data, want, n) / scale;
            CHECK(lt_view_numel(&g) == n && d <= 1e-4, "prompt %d %s: relative diff %g", p, hook, d);
            lt_free(want);
        }
    lt_view g;
    CHECK_OK(lt_run_grad(r, lt_hook_find(m, "blocks.1.hook_resid_post"), &g));
    snprintf(rk, sizeof rk, "p%d.resid_final.grad", p);
    int64_t n;
    float *want = ref(rk, &n);
    double scale = 0;
    for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs(want[i]));
    double d = check_max_abs_diff(g.data, want, n) / scale;
    CHECK(d <= 1e-4, "prompt %d resid_final grad: relative diff %g", p, d);
    lt_free(want);
    lt_free(dlogits);
    lt_run_free(r);
    free(ids);
}

/* Loss of the tiny model at its current parameters (double accumulation). */
static double loss_of(lt_run *r, const int32_t *ids, int B, int T) {
    float *logits;
    double loss;
    if (lt_forward(r, ids, B, T, &logits) || lt_run_loss(r, ids, B, T, &loss)) return NAN;
    return loss;
}

/* Parameter gradients of the mean cross-entropy against central finite
 * differences, on a few entries of every parameter tensor. */
static void check_finite_differences(void) {
    lt_config cfg = {.n_layer = 2, .n_head = 2, .n_embd = 8, .d_mlp = 16, .n_ctx = 8, .d_vocab = 11, .ln_eps = 1e-5f};
    lt_model *m;
    CHECK_OK(lt_model_random(&cfg, 7, &m));
    /* larger weights than GPT-2 init so that every path matters */
    for (int i = 0; i < lt_model_param_count(m); i++) {
        lt_view v;
        lt_model_param(m, lt_model_param_name(m, i), &v);
        uint64_t s = 99 + (uint64_t)i;
        for (int64_t j = 0; j < lt_view_numel(&v); j++) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            v.data[j] += 0.3f * ((float)((s >> 40) & 0xffff) / 65536.0f - 0.5f);
        }
    }
    int32_t ids[2][6] = {{1, 4, 2, 9, 3, 3}, {0, 10, 5, 5, 7, 2}};
    int B = 2, T = 6, V = cfg.d_vocab;
    lt_run *r;
    lt_run_new(m, &r);
    lt_run_keep_activations(r, 1);
    float *logits;
    lt_forward(r, &ids[0][0], B, T, &logits);
    /* d loss / d logits = (softmax - onehot) / count */
    float *dl = lt_alloc((size_t)B * T * V);
    int count = B * (T - 1);
    for (int b = 0; b < B; b++)
        for (int t = 0; t + 1 < T; t++) {
            const float *row = logits + ((size_t)b * T + t) * V;
            float *d = dl + ((size_t)b * T + t) * V;
            double mx = row[0], sum = 0;
            for (int v = 1; v < V; v++) mx = fmax(mx, row[v]);
            for (int v = 0; v < V; v++) sum += exp(row[v] - mx);
            for (int v = 0; v < V; v++) d[v] = (float)(exp(row[v] - mx) / sum / count);
            d[ids[b][t + 1]] -= 1.0f / count;
        }
    lt_backward_opts o = {0, -1, -1, -1, -1, -1, 1};
    lt_run_zero_param_grads(r);
    CHECK_OK(lt_backward(r, dl, NULL, 0, &o));
    float *grads;
    size_t ng;
    CHECK_OK(lt_run_param_grads(r, &grads, &ng));
    lt_view all;
    lt_model_param(m, "wte.weight", &all);
    double worst = 0;
    for (int i = 0; i < lt_model_param_count(m); i++) {
        lt_view v;
        lt_model_param(m, lt_model_param_name(m, i), &v);
        int64_t n = lt_view_numel(&v);
        for (int64_t j = 0; j < n; j += (n > 7 ? n / 7 : 1)) {
            float keep = v.data[j];
            const float h = 1e-2f;
            v.data[j] = keep + h;
            double up = loss_of(r, &ids[0][0], B, T);
            v.data[j] = keep - h;
            double down = loss_of(r, &ids[0][0], B, T);
            v.data[j] = keep;
            double fd = (up - down) / (2.0 * h);
            double an = grads[(v.data - all.data) + j];
            double rel = fabs(fd - an) / fmax(1e-2, fabs(fd) + fabs(an));
            if (rel > worst) worst = rel;
            CHECK(rel <= 1e-2, "%s[%lld]: finite difference %.6g, backward %.6g", lt_model_param_name(m, i), (long long)j, fd, an);
        }
    }
    printf("finite differences: worst relative difference %.3g\n", worst);
    lt_free(dl);
    lt_run_free(r);
    lt_model_free(m);
}

int main(void) {
    refs_open();
    lt_model *m;
    CHECK_OK(lt_model_load(check_path("tests/fixtures/hf-gpt2-tiny2"), NULL, &m));
    for (int p = 0; p < 3; p++) check_prompt(m, p);
    lt_model_free(m);
    lt_st_close(refs);
    check_finite_differences();
    return check_summary();
}
