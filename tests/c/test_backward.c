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

/* The loss of the fp32 forward pass. */
static double loss_of(lt_run *r, const int32_t *ids, int B, int T) {
    float *logits;
    double loss;
    if (lt_forward(r, ids, B, T, &logits) || lt_run_loss(r, ids, B, T, &loss)) return NAN;
    return loss;
}

/* The tiny model's mean next-token loss computed independently in double
 * precision from its parameters (HF layout, read through lt_model_param), so
 * that finite differences are exact enough to judge the fp32 backward. */
static double param_at(lt_model *m, const char *name, int64_t i) {
    lt_view v;
    lt_model_param(m, name, &v);
    return v.data[i];
}

static void layernorm_d(double *out, const double *x, int C, lt_model *m, const char *w, const char *b) {
    double mean = 0, var = 0;
    for (int i = 0; i < C; i++) mean += x[i];
    mean /= C;
    for (int i = 0; i < C; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= C;
    for (int i = 0; i < C; i++) out[i] = (x[i] - mean) / sqrt(var + 1e-5) * param_at(m, w, i) + param_at(m, b, i);
}

static double loss_double(lt_model *m, const int32_t *ids, int B, int T) {
    const lt_config *c = lt_model_config(m);
    int C = c->n_embd, H = c->n_head, D = c->d_head, M = c->d_mlp, V = c->d_vocab;
    double x[8][16], h[16], qkv[8][48], z[16], mlp[64], total = 0;
    char n1[64], n2[64];
    for (int b = 0; b < B; b++) {
        const int32_t *row = ids + b * T;
        for (int t = 0; t < T; t++)
            for (int i = 0; i < C; i++) x[t][i] = param_at(m, "wte.weight", (int64_t)row[t] * C + i) + param_at(m, "wpe.weight", (int64_t)t * C + i);
        for (int l = 0; l < c->n_layer; l++) {
            for (int t = 0; t < T; t++) {
                snprintf(n1, sizeof n1, "h.%d.ln_1.weight", l); snprintf(n2, sizeof n2, "h.%d.ln_1.bias", l);
                layernorm_d(h, x[t], C, m, n1, n2);
                snprintf(n1, sizeof n1, "h.%d.attn.c_attn.weight", l); snprintf(n2, sizeof n2, "h.%d.attn.c_attn.bias", l);
                for (int j = 0; j < 3 * C; j++) {
                    double acc = param_at(m, n2, j);
                    for (int i = 0; i < C; i++) acc += h[i] * param_at(m, n1, (int64_t)i * 3 * C + j);
                    qkv[t][j] = acc;
                }
            }
            double attn[8][16];
            for (int t = 0; t < T; t++) {
                for (int hh = 0; hh < H; hh++) {
                    double s[8], mx = -1e300, sum = 0;
                    for (int k = 0; k <= t; k++) {
                        s[k] = 0;
                        for (int d = 0; d < D; d++) s[k] += qkv[t][hh * D + d] * qkv[k][C + hh * D + d];
                        s[k] /= sqrt((double)D);
                        if (s[k] > mx) mx = s[k];
                    }
                    for (int k = 0; k <= t; k++) { s[k] = exp(s[k] - mx); sum += s[k]; }
                    for (int d = 0; d < D; d++) {
                        double acc = 0;
                        for (int k = 0; k <= t; k++) acc += s[k] / sum * qkv[k][2 * C + hh * D + d];
                        z[hh * D + d] = acc;
                    }
                }
                snprintf(n1, sizeof n1, "h.%d.attn.c_proj.weight", l); snprintf(n2, sizeof n2, "h.%d.attn.c_proj.bias", l);
                for (int j = 0; j < C; j++) {
                    double acc = param_at(m, n2, j);
                    for (int i = 0; i < C; i++) acc += z[i] * param_at(m, n1, (int64_t)i * C + j);
                    attn[t][j] = acc;
                }
            }
            for (int t = 0; t < T; t++) {
                for (int i = 0; i < C; i++) x[t][i] += attn[t][i];
                snprintf(n1, sizeof n1, "h.%d.ln_2.weight", l); snprintf(n2, sizeof n2, "h.%d.ln_2.bias", l);
                layernorm_d(h, x[t], C, m, n1, n2);
                snprintf(n1, sizeof n1, "h.%d.mlp.c_fc.weight", l); snprintf(n2, sizeof n2, "h.%d.mlp.c_fc.bias", l);
                for (int j = 0; j < M; j++) {
                    double acc = param_at(m, n2, j);
                    for (int i = 0; i < C; i++) acc += h[i] * param_at(m, n1, (int64_t)i * M + j);
                    mlp[j] = 0.5 * acc * (1 + tanh(sqrt(2 / 3.141592653589793) * (acc + 0.044715 * acc * acc * acc)));
                }
                snprintf(n1, sizeof n1, "h.%d.mlp.c_proj.weight", l); snprintf(n2, sizeof n2, "h.%d.mlp.c_proj.bias", l);
                for (int j = 0; j < C; j++) {
                    double acc = param_at(m, n2, j);
                    for (int i = 0; i < M; i++) acc += mlp[i] * param_at(m, n1, (int64_t)i * C + j);
                    x[t][j] += acc;
                }
            }
        }
        for (int t = 0; t + 1 < T; t++) {
            layernorm_d(h, x[t], C, m, "ln_f.weight", "ln_f.bias");
            double logits[16], mx = -1e300, sum = 0;
            for (int v = 0; v < V; v++) {
                logits[v] = 0;
                for (int i = 0; i < C; i++) logits[v] += h[i] * param_at(m, "wte.weight", (int64_t)v * C + i);
                if (logits[v] > mx) mx = logits[v];
            }
            for (int v = 0; v < V; v++) sum += exp(logits[v] - mx);
            total += mx + log(sum) - logits[row[t + 1]];
        }
    }
    return total / (B * (T - 1));
}

/* Parameter gradients of the mean cross-entropy against central finite
 * differences of the double-precision loss, on a few entries of every
 * parameter tensor (1e-3 relative). */
static void check_finite_differences(void) {
    /* sizes must fit loss_double's fixed arrays: T <= 8, C <= 16, 3C <= 48, M <= 64, V <= 16 */
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
    double fp32 = loss_of(r, &ids[0][0], B, T), f64 = loss_double(m, &ids[0][0], B, T);
    CHECK(fabs(fp32 - f64) < 1e-5, "the double-precision reference agrees with the forward pass: %.8f vs %.8f", fp32, f64);
    lt_forward(r, &ids[0][0], B, T, &logits);
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
            /* the double-precision loss, perturbed through the fp32 weights:
             * h is exactly representable around the weight's value */
            float keep = v.data[j];
            const float h = 1.0f / 1024;
            v.data[j] = keep + h;
            double up = loss_double(m, &ids[0][0], B, T);
            v.data[j] = keep - h;
            double down = loss_double(m, &ids[0][0], B, T);
            v.data[j] = keep;
            double fd = ((up - down) / ((double)(keep + h) - (double)(keep - h)));
            double an = grads[(v.data - all.data) + j];
            double rel = fabs(fd - an) / fmax(1e-3, fabs(fd) + fabs(an));
            if (rel > worst) worst = rel;
            CHECK(rel <= 1e-3, "%s[%lld]: finite difference %.8g, backward %.8g", lt_model_param_name(m, i), (long long)j, fd, an);
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
