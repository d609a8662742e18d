/*
 * test_model.c: the forward pass against Hugging Face transformers' outputs
 * for the tiny GPT-2 fixture (tests/fixtures/hf-gpt2-tiny2): logits, loss,
 * greedy tokens and the activations at the hook points; the same model
 * rewritten in the hub layout and in F16/BF16; and bad input.
 */
#include "check.h"
#include "refs.h"
#include "internal.h"

#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *MODEL = "tests/fixtures/hf-gpt2-tiny2";
/* Compares the capture at a hook point with a reference tensor. */
static void check_capture(lt_run *r, lt_model *m, const char *hook, const char *key, double tol) {
    lt_view v;
    int point = lt_hook_find(m, hook);
    CHECK(point >= 0, "%s", hook);
    if (point < 0 || lt_run_take_capture(r, point, &v)) { check_failed++; return; }
    int64_t n;
    float *want = ref(key, &n);
    CHECK(lt_view_numel(&v) == n, "%s: %lld elements, reference %lld", hook, (long long)lt_view_numel(&v), (long long)n);
    if (lt_view_numel(&v) == n) {
        double d = check_max_abs_diff(v.data, want, n);
        CHECK(d <= tol, "%s vs %s: max abs diff %g", hook, key, d);
    }
    lt_free(want);
    lt_free(v.data);
}

static const char *hooks_per_layer[][2] = {
    {"hook_resid_pre", "resid_pre"}, {"attn.hook_pattern", "attn_pattern"}, {"attn.hook_z", "attn_z"},
    {"hook_attn_out", "attn_out"},   {"mlp.hook_pre", "mlp_pre"},           {"mlp.hook_post", "mlp_post"},
};

static void check_prompt(lt_model *m, int p) {
    int T;
    int32_t *ids = ref_ids(p, &T);
    const lt_config *c = lt_model_config(m);
    lt_run *r;
    CHECK_OK(lt_run_new(m, &r));
    char hook[96], key[96];
    for (int l = 0; l < c->n_layer; l++)
        for (size_t k = 0; k < sizeof hooks_per_layer / sizeof *hooks_per_layer; k++) {
            snprintf(hook, sizeof hook, "blocks.%d.%s", l, hooks_per_layer[k][0]);
            CHECK_OK(lt_run_capture(r, lt_hook_find(m, hook), 1));
        }
    snprintf(hook, sizeof hook, "blocks.%d.hook_resid_post", c->n_layer - 1);
    CHECK_OK(lt_run_capture(r, lt_hook_find(m, hook), 1));

    float *logits;
    CHECK_OK(lt_forward(r, ids, 1, T, &logits));
    int64_t n;
    snprintf(key, sizeof key, "p%d.logits_last", p);
    float *last = ref(key, &n);
    double d = check_max_abs_diff(logits + (size_t)(T - 1) * c->d_vocab, last, n);
    CHECK(d <= 1e-4, "prompt %d: last-position logits max abs diff %g", p, d);
    lt_free(last);
    if (p == 0) {
        float *all = ref("p0.logits", &n);
        d = check_max_abs_diff(logits, all, n);
        CHECK(d <= 1e-4, "prompt 0: all logits max abs diff %g", d);
        lt_free(all);
    }
    double loss;
    CHECK_OK(lt_run_loss(r, ids, 1, T, &loss));
    snprintf(key, sizeof key, "p%d.loss", p);
    float *want_loss = ref(key, NULL);
    CHECK(fabs(loss - want_loss[0]) <= 1e-5, "prompt %d: loss %.7f, reference %.7f", p, loss, want_loss[0]);
    lt_free(want_loss);

    for (int l = 0; l < c->n_layer; l++)
        for (size_t k = 0; k < sizeof hooks_per_layer / sizeof *hooks_per_layer; k++) {
            snprintf(hook, sizeof hook, "blocks.%d.%s", l, hooks_per_layer[k][0]);
            snprintf(key, sizeof key, "p%d.%s.%d", p, hooks_per_layer[k][1], l);
            check_capture(r, m, hook, key, 1e-4);
        }
    snprintf(hook, sizeof hook, "blocks.%d.hook_resid_post", c->n_layer - 1);
    snprintf(key, sizeof key, "p%d.resid_final", p);
    check_capture(r, m, hook, key, 1e-4);

    /* 12 greedy tokens, recomputing the whole prefix each step */
    lt_run_clear_captures(r);
    int32_t seq[256];
    memcpy(seq, ids, (size_t)T * sizeof *seq);
    snprintf(key, sizeof key, "p%d.greedy", p);
    float *greedy = ref(key, &n);
    int same = 1;
    uint64_t rng = 1;
    for (int i = 0; i < n; i++) {
        if (lt_forward(r, seq, 1, T + i, &logits)) { same = 0; break; }
        seq[T + i] = lt_sample(logits + (size_t)(T + i - 1) * c->d_vocab, c->d_vocab, 0.0f, 0, &rng);
        if (seq[T + i] != (int32_t)greedy[i]) same = 0;
    }
    CHECK(same, "prompt %d: greedy tokens differ from the reference", p);
    lt_free(greedy);
    lt_run_free(r);
    free(ids);
}

/* Last-position logits of prompt 0 for a model directory. */
static float *logits_of(const char *dir, lt_model **keep) {
    lt_model *m;
    if (lt_model_load(dir, NULL, &m)) { fprintf(stderr, "load %s: %s\n", dir, lt_last_error()); return NULL; }
    int T;
    int32_t *ids = ref_ids(0, &T);
    lt_run *r;
    float *logits, *out = NULL;
    if (!lt_run_new(m, &r) && !lt_forward(r, ids, 1, T, &logits)) {
        int V = lt_model_config(m)->d_vocab;
        out = lt_alloc((size_t)V);
        memcpy(out, logits + (size_t)(T - 1) * V, (size_t)V * sizeof(float));
    }
    lt_run_free(r);
    free(ids);
    if (keep) *keep = m; else lt_model_free(m);
    return out;
}

static void copy_file(const char *from, const char *to) {
    char *data;
    size_t len;
    if (lt_read_file(from, &data, &len)) return;
    FILE *f = fopen(to, "wb");
    fwrite(data, 1, len, f);
    fclose(f);
    free(data);
}

/* Rewrites the fixture: hub names (no prefix, with attn.bias buffers) in a
 * dtype, into dir. */
static void rewrite(lt_model *m, const char *dir, int dtype, int hub_style, int drop_tensor, int wrong_shape) {
    mkdir(dir, 0777);
    char path[1024];
    snprintf(path, sizeof path, "%s/config.json", dir);
    copy_file(check_path("tests/fixtures/hf-gpt2-tiny2/config.json"), path);
    lt_st_writer *w;
    lt_st_writer_new(&w);
    int n = lt_model_param_count(m);
    uint16_t *halves[64] = {0};
    float *mask = NULL;
    for (int i = 0; i < n; i++) {
        if (i == drop_tensor) continue;
        const char *pname = lt_model_param_name(m, i);
        lt_view v;
        lt_model_param(m, pname, &v);
        char name[128];
        snprintf(name, sizeof name, "%s%s", hub_style ? "" : "transformer.", pname);
        int64_t shape[2] = {v.shape[0], v.shape[1]};
        if (i == wrong_shape) shape[0] -= 1;
        const void *data = v.data;
        if (dtype != LT_DTYPE_F32) {
            int64_t k = lt_view_numel(&v);
            halves[i] = malloc((size_t)k * 2);
            for (int64_t j = 0; j < k; j++)
                halves[i][j] = dtype == LT_DTYPE_F16 ? lt_f32_to_f16(v.data[j]) : lt_f32_to_bf16(v.data[j]);
            data = halves[i];
        }
        lt_st_writer_add(w, name, dtype, v.ndim, shape, data);
    }
    if (hub_style) {
        int64_t shape[4] = {1, 1, 8, 8};
        mask = lt_alloc(64);
        for (int l = 0; l < lt_model_config(m)->n_layer; l++) {
            char name[64];
            snprintf(name, sizeof name, "h.%d.attn.bias", l);
            lt_st_writer_add(w, name, LT_DTYPE_F32, 4, shape, mask);
        }
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (lt_st_writer_save(w, path)) fprintf(stderr, "rewrite: %s\n", lt_last_error());
    lt_st_writer_free(w);
    for (int i = 0; i < 64; i++) free(halves[i]);
    lt_free(mask);
}

static void check_layouts(void) {
    lt_model *m;
    float *base = logits_of(check_path(MODEL), &m);
    CHECK(base != NULL, "fixture loads");
    if (!base) return;
    char tmpl[] = "/tmp/lantern-model-XXXXXX";
    char *tmp = mkdtemp(tmpl);
    char dir[1024];
    int V = lt_model_config(m)->d_vocab;

    snprintf(dir, sizeof dir, "%s/hub", tmp);
    rewrite(m, dir, LT_DTYPE_F32, 1, -1, -1);
    float *hub = logits_of(dir, NULL);
    CHECK(hub && check_max_abs_diff(hub, base, V) == 0.0, "hub layout gives identical logits");
    lt_free(hub);

    const int dtypes[2] = {LT_DTYPE_F16, LT_DTYPE_BF16};
    const double tol[2] = {0.05, 0.5};   /* the rounding of the weights, not of the computation */
    for (int k = 0; k < 2; k++) {
        snprintf(dir, sizeof dir, "%s/half%d", tmp, k);
        rewrite(m, dir, dtypes[k], 0, -1, -1);
        float *h = logits_of(dir, NULL);
        double d = h ? check_max_abs_diff(h, base, V) : 1e9;
        CHECK(d > 0 && d < tol[k], "%s logits within the weights' rounding: max abs diff %g", k ? "BF16" : "F16", d);
        lt_free(h);
    }

    lt_model *bad;
    snprintf(dir, sizeof dir, "%s/missing", tmp);
    rewrite(m, dir, LT_DTYPE_F32, 0, 5, -1);
    CHECK_FAILS(lt_model_load(dir, NULL, &bad), "missing tensor 'h.0.attn.c_attn.bias'");
    snprintf(dir, sizeof dir, "%s/shape", tmp);
    rewrite(m, dir, LT_DTYPE_F32, 0, -1, 4);
    CHECK_FAILS(lt_model_load(dir, NULL, &bad), "h.0.attn.c_attn.weight' has shape [63, 192], expected [64, 192]");

    /* n_embd not divisible by n_head */
    snprintf(dir, sizeof dir, "%s/heads", tmp);
    mkdir(dir, 0777);
    char path[1100];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "{\"n_layer\": 2, \"n_head\": 5, \"n_embd\": 64, \"n_positions\": 128, \"vocab_size\": 50257}");
    fclose(f);
    CHECK_FAILS(lt_model_load(dir, NULL, &bad), "n_embd (64) is not divisible by n_head (5)");
    CHECK_FAILS(lt_model_load("/nonexistent-dir", NULL, &bad), "/nonexistent-dir/config.json");

    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    CHECK(system(cmd) == 0, "cleanup");
    lt_free(base);
    lt_model_free(m);
}

static void check_bad_input(void) {
    lt_model *m;
    CHECK_OK(lt_model_load(check_path(MODEL), NULL, &m));
    lt_run *r;
    CHECK_OK(lt_run_new(m, &r));
    float *logits;
    int32_t ids[200] = {0};
    ids[1] = 50257;
    CHECK_FAILS(lt_forward(r, ids, 1, 3, &logits), "token id 50257 at position 1 is out of range (d_vocab = 50257)");
    ids[1] = -1;
    CHECK_FAILS(lt_forward(r, ids, 1, 3, &logits), "token id -1");
    ids[1] = 0;
    CHECK_FAILS(lt_forward(r, ids, 1, 129, &logits), "longer than the model's context (n_ctx = 128)");
    CHECK_FAILS(lt_forward(r, ids, 1, 0, &logits), "empty input");
    CHECK_OK(lt_forward(r, ids, 1, 128, &logits));
    CHECK(lt_hook_find(m, "blocks.2.hook_resid_pre") < 0 && strstr(lt_last_error(), "layer 2 out of range"), "layer range");
    CHECK(lt_hook_find(m, "blocks.0.hook_nothing") < 0 && strstr(lt_last_error(), "unknown hook point"), "unknown hook");
    CHECK(lt_hook_find(m, "blocks.-1.mlp.hook_post") == lt_hook_find(m, "blocks.1.mlp.hook_post"), "negative layer");
    lt_run_free(r);
    lt_model_free(m);
}

int main(void) {
    refs_open();
    lt_model *m;
    CHECK_OK(lt_model_load(check_path(MODEL), NULL, &m));
    if (!m) return check_summary();
    const lt_config *c = lt_model_config(m);
    CHECK(c->n_layer == 2 && c->n_head == 4 && c->n_embd == 64 && c->d_head == 16 && c->d_mlp == 256 &&
          c->n_ctx == 128 && c->d_vocab == 50257, "config");
    for (int p = 0; p < 3; p++) check_prompt(m, p);
    lt_model_free(m);
    check_layouts();
    check_bad_input();
    lt_st_close(refs);
    return check_summary();
}
