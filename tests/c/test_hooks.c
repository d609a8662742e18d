/*
 * test_hooks.c: the C interface of hook points on the tiny GPT-2 fixture:
 * captures and their ownership, built-in interventions (zero, set, scale,
 * add, patch, mean) against the values they must produce, a callback that
 * edits, and bad indices reported as errors. The Lua tests cover the same
 * ground through the binding; this one runs under the sanitizers in C.
 */
#include "check.h"

#include <stdint.h>

static const char *MODEL = "tests/fixtures/hf-gpt2-tiny2";

/* Prompt 0 of the fixture, and the same prompt with the two names swapped. */
static const int32_t CLEAN[14] = {2215, 5335, 290, 1757, 1816, 284, 262, 3650, 11, 1757, 2921, 257, 4144, 284};
static const int32_t CORRUPT[14] = {2215, 1757, 290, 5335, 1816, 284, 262, 3650, 11, 5335, 2921, 257, 4144, 284};
enum { T = 14 };

static lt_model *m;
static const lt_config *cfg;

static int point(const char *name) {
    int p = lt_hook_find(m, name);
    if (p < 0) { fprintf(stderr, "%s\n", lt_last_error()); exit(1); }
    return p;
}

/* Runs ids (B rows) and hands over the capture at p (caller frees). */
static float *capture(lt_run *r, int p, const int32_t *ids, int B, lt_view *v) {
    lt_run_clear_captures(r);
    if (lt_run_capture(r, p, 1) || lt_forward(r, ids, B, T, NULL) || lt_run_take_capture(r, p, v)) {
        fprintf(stderr, "capture: %s\n", lt_last_error());
        check_failed++;
        return NULL;
    }
    lt_run_clear_captures(r);
    return v->data;
}

static lt_intervention iv_new(int op) {
    lt_intervention iv;
    memset(&iv, 0, sizeof iv);
    iv.op = op;
    iv.batch_row = -1;
    return iv;
}

static void check_captures(void) {
    lt_run *r;
    CHECK_OK(lt_run_new(m, &r));
    int pe = point("hook_embed"), pp = point("hook_pos_embed"), pr = point("blocks.0.hook_resid_pre");
    CHECK_OK(lt_run_capture(r, pe, 1));
    CHECK_OK(lt_run_capture(r, pp, 1));
    CHECK_OK(lt_run_capture(r, pr, 1));
    float *logits;
    CHECK_OK(lt_forward(r, CLEAN, 1, T, &logits));
    lt_view e, p, x;
    CHECK_OK(lt_run_take_capture(r, pe, &e));
    CHECK_OK(lt_run_take_capture(r, pp, &p));
    CHECK_OK(lt_run_take_capture(r, pr, &x));
    CHECK(x.ndim == 3 && x.shape[0] == 1 && x.shape[1] == T && x.shape[2] == cfg->n_embd, "resid_pre shape [1, T, C]");
    int exact = 1;
    for (int64_t i = 0; i < lt_view_numel(&x); i++) exact &= x.data[i] == e.data[i] + p.data[i];
    CHECK(exact, "resid_pre == embed + pos_embed exactly");
    /* the embedding row of token 0 is wte row CLEAN[0] */
    lt_view wte;
    CHECK_OK(lt_model_param(m, "wte.weight", &wte));
    CHECK(check_max_abs_diff(e.data, wte.data + (size_t)CLEAN[0] * cfg->n_embd, cfg->n_embd) == 0, "embed row");
    /* taking hands ownership over: a second take fails, the buffers
     * outlive later forwards and the run itself */
    CHECK_FAILS(lt_run_take_capture(r, pe, &e), "nothing captured at hook_embed");
    CHECK_OK(lt_forward(r, CORRUPT, 1, T, &logits));
    CHECK(e.data[cfg->n_embd] == wte.data[(size_t)CLEAN[1] * cfg->n_embd], "taken capture kept its values");
    lt_view again;
    CHECK_OK(lt_run_take_capture(r, pe, &again));
    CHECK(again.data != e.data && again.data[cfg->n_embd] == wte.data[(size_t)CORRUPT[1] * cfg->n_embd],
          "a new capture in a new buffer");
    lt_free(again.data);
    /* captures not taken are freed by clear_captures / run_free (the
     * sanitizer build checks for leaks) */
    CHECK_OK(lt_forward(r, CLEAN, 1, T, &logits));
    lt_run_clear_captures(r);
    CHECK_FAILS(lt_run_take_capture(r, pp, &again), "nothing captured");
    CHECK_OK(lt_run_capture(r, pp, 1));
    CHECK_OK(lt_forward(r, CLEAN, 1, T, &logits));
    lt_run_free(r);
    CHECK(p.data[0] == p.data[0] && x.data[0] == e.data[0] + p.data[0], "captures outlive the run");
    lt_free(e.data);
    lt_free(p.data);
    lt_free(x.data);
}

static void check_interventions(void) {
    lt_run *r;
    CHECK_OK(lt_run_new(m, &r));
    int C = cfg->n_embd, M = cfg->d_mlp, H = cfg->n_head, D = cfg->d_head;
    int post = point("blocks.0.mlp.hook_post"), z = point("blocks.1.attn.hook_z"), resid = point("blocks.1.hook_resid_pre");
    lt_view base_post, base_z, base_resid, clean_resid, got;
    float *bp = capture(r, post, CLEAN, 1, &base_post);
    float *bz = capture(r, z, CLEAN, 1, &base_z);
    float *br = capture(r, resid, CORRUPT, 1, &base_resid);
    float *cr = capture(r, resid, CLEAN, 1, &clean_resid);
    if (!bp || !bz || !br || !cr) return;

    /* zero: neurons 17 and 40 at the last position (captures are taken
     * after the hooks, so they show the edit) */
    int32_t neurons[2] = {17, 40}, last[1] = {-1};
    lt_intervention iv = iv_new(LT_IV_ZERO);
    iv.indices = neurons; iv.n_indices = 2;
    iv.positions = last; iv.n_positions = 1;
    CHECK_OK(lt_run_add_intervention(r, post, &iv));
    float *g = capture(r, post, CLEAN, 1, &got);
    if (g) {
        int ok = 1;
        for (int t = 0; t < T; t++)
            for (int n = 0; n < M; n++) {
                int hit = t == T - 1 && (n == 17 || n == 40);
                ok &= g[t * M + n] == (hit ? 0.0f : bp[t * M + n]);
            }
        CHECK(ok, "zero: only the selected neurons at the last position are 0");
        lt_free(g);
    }
    lt_run_clear_hooks(r);

    /* set then scale on head 2 of z: applied in the order added */
    int32_t head2[1] = {2};
    iv = iv_new(LT_IV_SET);
    iv.value = 4.0f; iv.heads = head2; iv.n_heads = 1;
    CHECK_OK(lt_run_add_intervention(r, z, &iv));
    iv.op = LT_IV_SCALE; iv.value = 0.25f;
    CHECK_OK(lt_run_add_intervention(r, z, &iv));
    g = capture(r, z, CLEAN, 1, &got);
    if (g) {
        int ok = 1;
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++)
                for (int d = 0; d < D; d++) {
                    size_t i = ((size_t)t * H + h) * D + d;
                    ok &= g[i] == (h == 2 ? 1.0f : bz[i]);
                }
        CHECK(ok, "set 4 then scale 0.25 gives 1 on head 2 only");
        lt_free(g);
    }
    lt_run_clear_hooks(r);

    /* add a vector at positions 0 and 5 */
    float *vec = lt_alloc((size_t)C);
    for (int c = 0; c < C; c++) vec[c] = 0.5f * c;
    int32_t pos[2] = {0, 5};
    iv = iv_new(LT_IV_ADD);
    iv.vec = vec; iv.vec_len = C; iv.positions = pos; iv.n_positions = 2;
    CHECK_OK(lt_run_add_intervention(r, resid, &iv));
    g = capture(r, resid, CORRUPT, 1, &got);
    if (g) {
        int ok = 1;
        for (int t = 0; t < T; t++)
            for (int c = 0; c < C; c++) {
                float want = br[t * C + c] + ((t == 0 || t == 5) ? vec[c] : 0.0f);
                ok &= g[t * C + c] == want;
            }
        CHECK(ok, "add a vector at positions 0 and 5");
        lt_free(g);
    }
    lt_run_clear_hooks(r);

    /* patch the clean residual into the corrupted run at every position:
     * the logits become the clean ones exactly */
    float *logits;
    size_t V = (size_t)cfg->d_vocab;
    float *clean_logits = lt_alloc((size_t)T * V);
    CHECK_OK(lt_forward(r, CLEAN, 1, T, &logits));
    memcpy(clean_logits, logits, (size_t)T * V * sizeof(float));
    iv = iv_new(LT_IV_PATCH);
    iv.src = cr; iv.src_rows = 1;
    CHECK_OK(lt_run_add_intervention(r, resid, &iv));
    CHECK_OK(lt_forward(r, CORRUPT, 1, T, &logits));
    CHECK(check_max_abs_diff(logits, clean_logits, (long)(T * V)) == 0, "patched run == clean run");
    /* with two rows and batch_row = 1 only the second row is patched */
    lt_run_clear_hooks(r);
    int32_t two[2 * T];
    memcpy(two, CORRUPT, sizeof CORRUPT);
    memcpy(two + T, CORRUPT, sizeof CORRUPT);
    iv.batch_row = 1;
    CHECK_OK(lt_run_add_intervention(r, resid, &iv));
    g = capture(r, resid, two, 2, &got);
    if (g) {
        CHECK(check_max_abs_diff(g, br, (long)T * C) == 0, "row 0 untouched");
        CHECK(check_max_abs_diff(g + (size_t)T * C, cr, (long)T * C) == 0, "row 1 patched");
        lt_free(g);
    }
    lt_run_clear_hooks(r);

    /* mean: a per-position source, and one broadcast over positions */
    float *mean = lt_alloc((size_t)T * C);
    for (int i = 0; i < T * C; i++) mean[i] = 0.5f * (br[i] + cr[i]);
    int32_t pos3[1] = {3};
    iv = iv_new(LT_IV_MEAN);
    iv.src = mean; iv.src_per_position = 1; iv.positions = pos3; iv.n_positions = 1;
    CHECK_OK(lt_run_add_intervention(r, resid, &iv));
    g = capture(r, resid, CORRUPT, 1, &got);
    if (g) {
        CHECK(check_max_abs_diff(g + 3 * C, mean + 3 * C, C) == 0, "mean at position 3");
        CHECK(check_max_abs_diff(g, br, 3 * C) == 0 && check_max_abs_diff(g + 4 * C, br + 4 * C, (long)(T - 4) * C) == 0,
              "other positions untouched");
        lt_free(g);
    }
    lt_run_clear_hooks(r);
    float *head_mean = lt_alloc((size_t)H * D);   /* [H, D], no position dimension */
    for (int i = 0; i < H * D; i++) head_mean[i] = (float)i;
    int32_t head1[1] = {1};
    iv = iv_new(LT_IV_MEAN);
    iv.src = head_mean; iv.src_per_position = 0; iv.heads = head1; iv.n_heads = 1;
    CHECK_OK(lt_run_add_intervention(r, z, &iv));
    g = capture(r, z, CLEAN, 1, &got);
    if (g) {
        int ok = 1;
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++)
                for (int d = 0; d < D; d++) {
                    size_t i = ((size_t)t * H + h) * D + d;
                    ok &= g[i] == (h == 1 ? (float)(h * D + d) : bz[i]);
                }
        CHECK(ok, "mean broadcast over positions on head 1");
        lt_free(g);
    }
    lt_run_clear_hooks(r);

    /* nothing attached any more: the run is the plain forward again */
    CHECK_OK(lt_forward(r, CLEAN, 1, T, &logits));
    CHECK(check_max_abs_diff(logits, clean_logits, (long)(T * V)) == 0, "hooks cleared");

    lt_free(vec);
    lt_free(mean);
    lt_free(head_mean);
    lt_free(clean_logits);
    lt_free(bp);
    lt_free(bz);
    lt_free(br);
    lt_free(cr);
    lt_run_free(r);
}

/* A callback doubling the activation; counts its calls in *ud. */
static int double_it(void *ud, int p, lt_view *act) {
    (void)p;
    (*(int *)ud)++;
    for (int64_t i = 0; i < lt_view_numel(act); i++) act->data[i] *= 2.0f;
    return 0;
}

static int refuse(void *ud, int p, lt_view *act) {
    (void)ud; (void)p; (void)act;
    return 1;
}

static void check_callbacks(void) {
    lt_run *r;
    CHECK_OK(lt_run_new(m, &r));
    int p = point("blocks.0.hook_mlp_out");
    lt_view base, got;
    float *b = capture(r, p, CLEAN, 1, &base);
    int calls = 0;
    CHECK_OK(lt_run_add_callback(r, p, double_it, &calls));
    float *g = capture(r, p, CLEAN, 1, &got);
    CHECK(calls == 1, "callback called once per forward");
    if (b && g) {
        int ok = got.ndim == 3 && got.shape[0] == 1 && got.shape[1] == T && got.shape[2] == cfg->n_embd;
        for (int64_t i = 0; i < lt_view_numel(&got); i++) ok &= g[i] == 2.0f * b[i];
        CHECK(ok, "the callback's edit is what the capture sees");
    }
    lt_free(g);
    /* a callback and an intervention at one point run in the order added */
    lt_intervention iv = iv_new(LT_IV_ZERO);
    CHECK_OK(lt_run_add_intervention(r, p, &iv));
    CHECK_OK(lt_run_add_callback(r, p, double_it, &calls));
    g = capture(r, p, CLEAN, 1, &got);
    if (g) {
        int zero = 1;
        for (int64_t i = 0; i < lt_view_numel(&got); i++) zero &= g[i] == 0.0f;
        CHECK(zero && calls == 3, "double, zero, double gives zeros");
        lt_free(g);
    }
    lt_run_clear_hooks(r);
    CHECK_OK(lt_run_add_callback(r, point("blocks.1.ln2.hook_scale"), refuse, NULL));
    float *logits;
    CHECK_FAILS(lt_forward(r, CLEAN, 1, T, &logits), "hook at blocks.1.ln2.hook_scale failed");
    CHECK_FAILS(lt_run_add_callback(r, p, NULL, NULL), "hook callback is NULL");
    lt_run_clear_hooks(r);
    CHECK_OK(lt_forward(r, CLEAN, 1, T, &logits));
    lt_free(b);
    lt_run_free(r);
}

static void check_bad_indices(void) {
    lt_run *r;
    CHECK_OK(lt_run_new(m, &r));
    int z = point("blocks.0.attn.hook_z"), post = point("blocks.0.mlp.hook_post"), resid = point("blocks.0.hook_resid_pre");
    float *logits;
    int32_t bad_head[1] = {4}, neg_head[1] = {-1}, head0[1] = {0};
    lt_intervention iv = iv_new(LT_IV_ZERO);
    iv.heads = bad_head; iv.n_heads = 1;
    CHECK_FAILS(lt_run_add_intervention(r, z, &iv), "blocks.0.attn.hook_z: head 4 out of range (model has 4 heads)");
    iv.heads = neg_head;
    CHECK_FAILS(lt_run_add_intervention(r, z, &iv), "head -1 out of range");
    iv.heads = head0;
    CHECK_FAILS(lt_run_add_intervention(r, post, &iv), "blocks.0.mlp.hook_post has no head dimension");
    CHECK_FAILS(lt_run_add_intervention(r, -1, &iv), "hook point -1 out of range");
    CHECK_FAILS(lt_run_add_intervention(r, lt_hook_count(m), &iv), "out of range");
    iv = iv_new(LT_IV_PATCH);
    CHECK_FAILS(lt_run_add_intervention(r, resid, &iv), "needs a source activation");
    iv = iv_new(42);
    CHECK_FAILS(lt_run_add_intervention(r, resid, &iv), "unknown intervention op 42");
    CHECK_FAILS(lt_run_capture(r, 9999, 1), "hook point 9999 out of range");

    /* indices checked against the activation's shape at forward time */
    int32_t bad_pos[1] = {T}, bad_neuron[1] = {256};
    iv = iv_new(LT_IV_ZERO);
    iv.positions = bad_pos; iv.n_positions = 1;
    CHECK_OK(lt_run_add_intervention(r, post, &iv));
    CHECK_FAILS(lt_forward(r, CLEAN, 1, T, &logits), "blocks.0.mlp.hook_post: position 14 out of range (size 14)");
    lt_run_clear_hooks(r);
    iv = iv_new(LT_IV_ZERO);
    iv.indices = bad_neuron; iv.n_indices = 1;
    CHECK_OK(lt_run_add_intervention(r, post, &iv));
    CHECK_FAILS(lt_forward(r, CLEAN, 1, T, &logits), "index 256 out of range (size 256)");
    lt_run_clear_hooks(r);
    iv = iv_new(LT_IV_ZERO);
    iv.batch_row = 1;
    CHECK_OK(lt_run_add_intervention(r, post, &iv));
    CHECK_FAILS(lt_forward(r, CLEAN, 1, T, &logits), "batch row 1 out of range (batch of 1)");
    lt_run_clear_hooks(r);
    iv.batch_row = -2;
    CHECK_OK(lt_run_add_intervention(r, post, &iv));
    CHECK_FAILS(lt_forward(r, CLEAN, 1, T, &logits), "batch row -2 is negative (-1 means every row)");
    lt_run_clear_hooks(r);
    float src[4] = {0};
    iv = iv_new(LT_IV_PATCH);
    iv.src = src; iv.src_rows = 3;
    CHECK_OK(lt_run_add_intervention(r, resid, &iv));
    CHECK_FAILS(lt_forward(r, CLEAN, 1, T, &logits), "patch source has 3 rows, the run has 1");
    lt_run_clear_hooks(r);
    iv = iv_new(LT_IV_ADD);
    iv.vec = src; iv.vec_len = 4;
    CHECK_OK(lt_run_add_intervention(r, resid, &iv));
    CHECK_FAILS(lt_forward(r, CLEAN, 1, T, &logits), "vector of length 4 does not match the last dimension (64)");
    lt_run_clear_hooks(r);
    CHECK_OK(lt_forward(r, CLEAN, 1, T, &logits));
    lt_run_free(r);
}

/* stop_at_layer: the points before the stop equal a whole pass's bit for
 * bit; no logits; later points, backward and the loss are errors; -1 runs
 * the whole model again. */
static void check_stop_at_layer(void) {
    lt_run *full, *r;
    CHECK_OK(lt_run_new(m, &full));
    CHECK_OK(lt_run_new(m, &r));
    if (!full || !r) { lt_run_free(full); lt_run_free(r); return; }
    lt_run_keep_activations(full, 1);
    lt_run_keep_activations(r, 1);
    float *logits = (float *)1;
    CHECK_OK(lt_forward(full, CLEAN, 1, T, NULL));
    CHECK_FAILS(lt_run_stop_at_layer(r, cfg->n_layer + 1), "out of range");
    CHECK_FAILS(lt_run_stop_at_layer(r, -2), "out of range");
    for (int stop = 0; stop <= cfg->n_layer; stop++) {
        CHECK_OK(lt_run_stop_at_layer(r, stop));
        CHECK_OK(lt_forward(r, CLEAN, 1, T, &logits));
        CHECK(logits == NULL, "stop_at_layer %d: no logits", stop);
        char name[64];
        snprintf(name, sizeof name, "blocks.%d.hook_resid_pre", stop < cfg->n_layer ? stop : stop - 1);
        lt_view a, b;
        if (stop == cfg->n_layer) snprintf(name, sizeof name, "blocks.%d.hook_resid_post", stop - 1);
        CHECK_OK(lt_run_activation(r, point(name), &a));
        CHECK_OK(lt_run_activation(full, point(name), &b));
        CHECK(check_max_abs_diff(a.data, b.data, T * cfg->n_embd) == 0, "stop %d: %s equals the whole pass's", stop, name);
        if (stop < cfg->n_layer) {
            snprintf(name, sizeof name, "blocks.%d.mlp.hook_post", stop);
            CHECK_FAILS(lt_run_activation(r, point(name), &a), "after the stop");
        }
        CHECK_FAILS(lt_run_activation(r, point("ln_final.hook_normalized"), &a), "after the stop");
        double loss;
        CHECK_FAILS(lt_run_loss(r, CLEAN, 1, T, &loss), "stopped before the logits");
        CHECK_FAILS(lt_backward(r, NULL, NULL, 0, NULL), "stopped at layer");
    }
    CHECK_OK(lt_run_stop_at_layer(r, -1));
    CHECK_OK(lt_forward(r, CLEAN, 1, T, &logits));
    float *full_logits;
    CHECK_OK(lt_forward(full, CLEAN, 1, T, &full_logits));
    CHECK(logits && check_max_abs_diff(logits, full_logits, T * cfg->d_vocab) == 0, "-1: the whole model again");
    lt_run_free(full);
    lt_run_free(r);
}

int main(void) {
    CHECK_OK(lt_model_load(check_path(MODEL), NULL, &m));
    if (!m) return check_summary();
    cfg = lt_model_config(m);
    check_captures();
    check_interventions();
    check_callbacks();
    check_bad_indices();
    check_stop_at_layer();
    lt_model_free(m);
    return check_summary();
}
