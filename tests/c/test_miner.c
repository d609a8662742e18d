/*
 * test_miner.c: the dataset miner on the tiny GPT-2 fixture and random
 * token windows: top windows, moments and attention write norms against a
 * brute-force computation over every window; SAE latents (two random SAEs
 * attached) against the SAEs' own encode of every window; the same result
 * whatever the feed size; a run killed with SIGKILL after two commits and
 * resumed gives the bytes of an uninterrupted run, with and without SAE
 * latents; option and SAE mismatches are errors.
 */
#include "check.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *MODEL = "tests/fixtures/hf-gpt2-tiny2";

enum { NW = 26, T = 12, TOP = 4, NRAND = 3, NBIN = 2, QW = 8 };

static int32_t ids[NW * T];
static char tmp_root[256];

static const char *store_path(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmp_root, name);
    return buf[k];
}

static void make_ids(int vocab) {
    uint64_t s = 12345;
    for (int i = 0; i < NW * T; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        ids[i] = (int32_t)((s >> 33) % (uint64_t)vocab);
    }
}

/* The test SAEs: a ReLU SAE on layer 0's MLP output and a TopK SAE on
 * layer 1's residual stream. */
enum { N_SAES = 2 };
static const char *SAE_HOOK[N_SAES] = {"blocks.0.mlp.hook_post", "blocks.1.hook_resid_pre"};
static const int SAE_LAYER[N_SAES] = {0, 1};
static const int SAE_WIDTH[N_SAES] = {40, 24};

/* Random SAEs for SAE_HOOK (weights from seed), attached to m with their
 * error term; saes[] receives them (the caller frees them after m). */
static int attach_saes(lt_model *m, uint64_t seed, lt_sae **saes) {
    const lt_config *c = lt_model_config(m);
    if (lt_sae_new(c->d_mlp, SAE_WIDTH[0], LT_SAE_RELU, 0, &saes[0]) ||
        lt_sae_new(c->n_embd, SAE_WIDTH[1], LT_SAE_TOPK, 6, &saes[1]))
        return LT_ERR;
    for (int i = 0; i < N_SAES; i++) {
        if (lt_sae_init_random(saes[i], seed + (uint64_t)i)) return LT_ERR;
        /* a small positive encoder bias, so that the ReLU latents fire often */
        lt_view b;
        if (lt_sae_param(saes[i], "b_enc", &b)) return LT_ERR;
        for (int64_t j = 0; j < b.shape[0]; j++) b.data[j] = 0.01f * (float)(j % 3);
        if (lt_model_attach_sae(m, lt_hook_find(m, SAE_HOOK[i]), saes[i], 1)) return LT_ERR;
    }
    return LT_OK;
}

static lt_miner_opts test_opts(void) {
    lt_miner_opts o;
    lt_miner_default_opts(&o);
    o.window = T;
    o.top_n = TOP;
    o.n_random = NRAND;
    o.n_per_bin = NBIN;
    o.quantile_windows = QW;
    o.kinds = LT_MINE_MLP | LT_MINE_ATTN;
    o.seed = 7;
    return o;
}

/* Feeds windows [from, to) in feeds of B. */
static int feed_range(lt_miner *mn, int from, int to, int B) {
    for (int w = from; w < to; w += B) {
        int n = to - w < B ? to - w : B;
        if (lt_miner_feed(mn, ids + (size_t)w * T, n, T, w)) return LT_ERR;
    }
    return LT_OK;
}

static lt_miner_opts sae_opts(void) {
    lt_miner_opts o = test_opts();
    o.kinds |= LT_MINE_SAE;
    return o;
}

/* The encoded record of every node of the given kinds (the test SAEs' latents
 * for LT_MINE_SAE), concatenated, for byte comparisons. */
static char *all_records(lt_miner *mn, const lt_config *c, unsigned kinds, size_t *len) {
    static const int order[3] = {LT_MINE_MLP, LT_MINE_ATTN, LT_MINE_SAE};
    char *out = NULL;
    *len = 0;
    for (int l = 0; l < c->n_layer; l++)
        for (int k = 0; k < 3; k++) {
            int kind = order[k], n = kind == LT_MINE_MLP ? c->d_mlp : kind == LT_MINE_ATTN ? c->n_head : 0;
            if (!(kinds & (unsigned)kind)) continue;
            for (int a = 0; kind == LT_MINE_SAE && a < N_SAES; a++)
                if (SAE_LAYER[a] == l) n = SAE_WIDTH[a];
            for (int i = 0; i < n; i++) {
                lt_record_set *rs;
                void *buf;
                size_t bl;
                if (lt_miner_record(mn, kind, l, i, &rs)) { free(out); return NULL; }
                lt_store_encode_record(rs, &buf, &bl);
                lt_free(rs);
                out = realloc(out, *len + bl);
                memcpy(out + *len, buf, bl);
                *len += bl;
                free(buf);
            }
        }
    return out;
}

/* ------------------------------------------------------ SIGKILL and resume */

/* The child mines with a commit after every feed of 4 windows and kills
 * itself with SIGKILL after the second commit; with_sae: with the test SAEs
 * attached and their latents mined. Runs before anything in this process
 * starts OpenMP threads (a forked child must not inherit a thread pool). */
static void killed_child(const char *path, int with_sae) {
    pid_t pid = fork();
    if (pid == 0) {
        lt_model *m;
        lt_store *st;
        lt_miner *mn;
        lt_sae *saes[N_SAES];
        lt_miner_opts o = with_sae ? sae_opts() : test_opts();
        if (lt_model_load(check_path(MODEL), NULL, &m) || (with_sae && attach_saes(m, 11, saes)) ||
            lt_store_open(path, 0, &st) || lt_miner_new(m, &o, &mn))
            _exit(3);
        for (int w = 0, commits = 0; w < NW; w += 4) {
            if (lt_miner_feed(mn, ids + (size_t)w * T, 4, T, w) || lt_miner_write(mn, st, "tiny", "{}")) _exit(4);
            if (++commits == 2) raise(SIGKILL);
        }
        _exit(5);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child status %d", status);
}

static void test_resume_after_kill(lt_model *m, const lt_config *c, int with_sae) {
    const char *killed = store_path(with_sae ? "killed_sae" : "killed");
    lt_store *st;
    lt_miner_opts o = with_sae ? sae_opts() : test_opts();
    CHECK_OK(lt_store_open(killed, 0, &st));
    lt_miner *mn;
    CHECK_OK(lt_miner_new(m, &o, &mn));
    CHECK(lt_miner_resume(mn, st, "tiny") == LT_OK, "resume: %s", lt_last_error());
    CHECK(lt_miner_windows(mn) == 8, "resumed at window %lld", (long long)lt_miner_windows(mn));
    CHECK_OK(feed_range(mn, 8, NW, 4));
    CHECK_OK(lt_miner_write(mn, st, "tiny", "{}"));

    lt_miner *ref;
    CHECK_OK(lt_miner_new(m, &o, &ref));
    CHECK_OK(feed_range(ref, 0, NW, 4));
    size_t la, lb;
    char *a = all_records(mn, c, o.kinds, &la), *b = all_records(ref, c, o.kinds, &lb);
    CHECK(a && b && la == lb && memcmp(a, b, la) == 0, "resumed records differ (%zu vs %zu bytes)", la, lb);

    /* What the store holds equals what the miner reports. */
    for (int k = 0; k < 1 + with_sae; k++) {
        lt_record_set *rs = NULL, *want = NULL;
        if (k == 0) CHECK_OK(lt_store_get_record(st, "tiny", "attn_head", 1, 3, &rs));
        else CHECK_OK(lt_store_get_record(st, "tiny", "sae_latent", 1, 5, &rs));
        CHECK_OK(lt_miner_record(ref, k == 0 ? LT_MINE_ATTN : LT_MINE_SAE, 1, k == 0 ? 3 : 5, &want));
        void *x = NULL, *y = NULL;
        size_t lx = 0, ly = 1;
        if (rs && want) {
            lt_store_encode_record(rs, &x, &lx);
            lt_store_encode_record(want, &y, &ly);
        }
        CHECK(lx == ly && memcmp(x, y, lx) == 0, "stored record differs");
        free(x); free(y); lt_free(rs); lt_free(want);
    }
    free(a); free(b);

    /* A miner with other options refuses the state; no state: NOT_FOUND. */
    lt_miner_opts o2 = o;
    o2.top_n = TOP + 1;
    lt_miner *other;
    CHECK_OK(lt_miner_new(m, &o2, &other));
    CHECK_FAILS(lt_miner_resume(other, st, "tiny"), "other options");
    CHECK(lt_miner_resume(other, st, "nobody") == LT_STORE_NOT_FOUND, "no state");
    lt_miner_free(other);
    if (with_sae) {
        /* Without the SAE latents: other options (kinds). */
        o2 = test_opts();
        CHECK_OK(lt_miner_new(m, &o2, &other));
        CHECK_FAILS(lt_miner_resume(other, st, "tiny"), "other options");
        lt_miner_free(other);
        /* SAEs of the same shapes at the same points, other weights. */
        lt_model *m2;
        lt_sae *saes2[N_SAES];
        CHECK_OK(lt_model_load(check_path(MODEL), NULL, &m2));
        CHECK_OK(attach_saes(m2, 99, saes2));
        CHECK_OK(lt_miner_new(m2, &o, &other));
        CHECK_FAILS(lt_miner_resume(other, st, "tiny"), "other SAEs");
        CHECK(strstr(lt_last_error(), "blocks.1.hook_resid_pre (layer 1, 24 latents"), "%s", lt_last_error());
        /* a refused resume leaves a fresh miner */
        CHECK(lt_miner_windows(other) == 0, "windows after a refused resume");
        lt_miner_free(other);
        lt_model_free(m2);
        for (int i = 0; i < N_SAES; i++) lt_sae_free(saes2[i]);
    }
    lt_miner_free(mn);
    lt_miner_free(ref);
    lt_store_close(st);
}

/* --------------------------------------------------------- brute force */

typedef struct { float max; int win; } ranked;

static int by_rank(const void *a, const void *b) {
    const ranked *x = a, *y = b;
    if (x->max != y->max) return x->max > y->max ? -1 : 1;
    return x->win - y->win;
}

/* Per node, all windows' activations [NW][T] computed one window at a time
 * with run activations; then the miner's records are checked against them. */
static void check_node(lt_miner *mn, int kind, int layer, int node, const float *acts, const int32_t *extra) {
    lt_record_set *rs;
    if (lt_miner_record(mn, kind, layer, node, &rs)) { CHECK(0, "record: %s", lt_last_error()); return; }
    ranked r[NW];
    double sum = 0;
    for (int w = 0; w < NW; w++) {
        r[w].win = w;
        r[w].max = -INFINITY;
        for (int t = 0; t < T; t++) {
            float a = acts[w * T + t];
            if (a > r[w].max) r[w].max = a;
            sum += a;
        }
    }
    qsort(r, NW, sizeof *r, by_rank);
    double n = NW * T, mean = sum / n, m2 = 0, m3 = 0, m4 = 0;
    for (int i = 0; i < NW * T; i++) {
        double d = acts[i] - mean;
        m2 += d * d;
        m3 += d * d * d;
        m4 += d * d * d * d;
    }
    double var = m2 / n, skew = sqrt(n) * m3 / pow(m2, 1.5), kurt = n * m4 / (m2 * m2) - 3;
    int ok = rs->n_top == TOP && rs->count == (uint64_t)(NW * T);
    for (int k = 0; ok && k < TOP; k++) {
        const lt_act_record *a = &rs->top[k];
        ok = a->window == r[k].win && a->n == T && (kind == LT_MINE_ATTN ? a->extra != NULL : a->extra == NULL);
        for (int t = 0; ok && t < T; t++) {
            ok = fabsf(a->acts[t] - acts[a->window * T + t]) <= 1e-4f * (1 + fabsf(acts[a->window * T + t])) &&
                 a->tokens[t] == ids[a->window * T + t];
            if (ok && extra) ok = a->extra[t] == extra[a->window * T + t];
        }
    }
    const char *what = kind == LT_MINE_MLP ? "mlp" : kind == LT_MINE_ATTN ? "attn" : "sae";
    CHECK(ok, "%s layer %d node %d: top windows differ from brute force", what, layer, node);
    double tol = 1e-5;
    CHECK(fabs(rs->mean - mean) <= tol * (fabs(mean) + sqrt(var)), "mean %g vs %g", rs->mean, mean);
    CHECK(fabs(rs->variance - var) <= tol * var, "variance %g vs %g", rs->variance, var);
    if (m2 > 0) {
        CHECK(fabs(rs->skewness - skew) <= tol * (1 + fabs(skew)), "skewness %g vs %g", rs->skewness, skew);
        CHECK(fabs(rs->kurtosis - kurt) <= tol * (1 + fabs(kurt)), "kurtosis %g vs %g", rs->kurtosis, kurt);
    } else {   /* a latent that never fired: no spread, so no shape */
        CHECK(isnan(rs->skewness) && isnan(rs->kurtosis), "%s layer %d node %d: skewness and kurtosis of a constant",
              what, layer, node);
    }
    /* Random sample: NRAND distinct windows, activations of those windows. */
    int rok = rs->n_random == NRAND;
    for (int k = 0; rok && k < NRAND; k++) {
        const lt_act_record *a = &rs->random[k];
        rok = a->window >= 0 && a->window < NW && fabsf(a->acts[0] - acts[a->window * T]) <= 1e-4f * (1 + fabsf(a->acts[0]));
        for (int j = 0; rok && j < k; j++) rok = rs->random[j].window != a->window;
    }
    CHECK(rok, "random sample of node %d", node);
    /* Bins: boundaries from the first QW window maxima; members inside. */
    int bok = rs->n_bins == 4;
    for (int b = 0; bok && b < 4; b++) {
        const lt_quantile_bin *bin = &rs->bins[b];
        bok = bin->n_records <= NBIN && !(bin->lo > bin->hi);
        for (int k = 0; bok && k < bin->n_records; k++) {
            const lt_act_record *a = &bin->records[k];
            float mx = -INFINITY;
            for (int t = 0; t < T; t++) if (a->acts[t] > mx) mx = a->acts[t];
            bok = a->window >= QW && (b == 0 || mx >= bin->lo) && (b == 3 ? mx <= bin->hi : mx < bin->hi);
        }
    }
    CHECK(bok, "quantile bins of node %d", node);
    lt_free(rs);
}

static void test_brute_force(lt_model *m, const lt_config *c) {
    lt_miner_opts o = test_opts();
    lt_miner *mn;
    CHECK_OK(lt_miner_new(m, &o, &mn));
    CHECK_OK(feed_range(mn, 0, NW, 5));
    CHECK(lt_miner_windows(mn) == NW, "windows %lld", (long long)lt_miner_windows(mn));
    CHECK(lt_miner_node_count(mn) == c->n_layer * (c->d_mlp + c->n_head), "node count");

    int L = c->n_layer, M = c->d_mlp, H = c->n_head, D = c->d_head, C = c->n_embd;
    float *mlp = malloc(sizeof(float) * (size_t)L * M * NW * T);    /* [L, M, NW*T] */
    float *att = malloc(sizeof(float) * (size_t)L * H * NW * T);    /* [L, H, NW*T] */
    int32_t *arg = malloc(sizeof(int32_t) * (size_t)L * H * NW * T);
    float *vo = malloc(sizeof(float) * C);
    lt_run *r;
    CHECK_OK(lt_run_new(m, &r));
    lt_run_keep_activations(r, 1);
    for (int w = 0; w < NW; w++) {
        float *logits;
        CHECK_OK(lt_forward(r, ids + w * T, 1, T, &logits));
        for (int l = 0; l < L; l++) {
            char name[96];
            lt_view post, pat, v, wo;
            snprintf(name, sizeof name, "blocks.%d.mlp.hook_post", l);
            CHECK_OK(lt_run_activation(r, lt_hook_find(m, name), &post));
            snprintf(name, sizeof name, "blocks.%d.attn.hook_pattern", l);
            CHECK_OK(lt_run_activation(r, lt_hook_find(m, name), &pat));
            snprintf(name, sizeof name, "blocks.%d.attn.hook_v", l);
            CHECK_OK(lt_run_activation(r, lt_hook_find(m, name), &v));
            snprintf(name, sizeof name, "h.%d.attn.c_proj.weight", l);
            CHECK_OK(lt_model_param(m, name, &wo));
            for (int t = 0; t < T; t++)
                for (int i = 0; i < M; i++) mlp[((size_t)l * M + i) * NW * T + w * T + t] = post.data[t * M + i];
            for (int h = 0; h < H; h++) {
                float nrm[T];
                for (int k = 0; k < T; k++) {   /* |v[k, h] W_O[h]| directly */
                    double s = 0;
                    for (int j = 0; j < C; j++) {
                        double x = 0;
                        for (int d = 0; d < D; d++) x += (double)v.data[(k * H + h) * D + d] * wo.data[(size_t)(h * D + d) * C + j];
                        s += x * x;
                    }
                    nrm[k] = (float)sqrt(s);
                }
                for (int q = 0; q < T; q++) {
                    double s = 0;
                    float best = -INFINITY;
                    int bk = 0;
                    for (int k = 0; k <= q; k++) {
                        float term = pat.data[(h * T + q) * T + k] * nrm[k];
                        s += term;
                        if (term > best) { best = term; bk = k; }
                    }
                    att[((size_t)l * H + h) * NW * T + w * T + q] = (float)s;
                    arg[((size_t)l * H + h) * NW * T + w * T + q] = bk;
                }
            }
        }
    }
    lt_run_free(r);
    for (int l = 0; l < L; l++) {
        for (int i = 0; i < M; i++) check_node(mn, LT_MINE_MLP, l, i, mlp + ((size_t)l * M + i) * NW * T, NULL);
        for (int h = 0; h < H; h++)
            check_node(mn, LT_MINE_ATTN, l, h, att + ((size_t)l * H + h) * NW * T, arg + ((size_t)l * H + h) * NW * T);
    }

    /* Other feed sizes give the same bytes. */
    lt_miner *other;
    CHECK_OK(lt_miner_new(m, &o, &other));
    CHECK_OK(feed_range(other, 0, NW, 3));
    size_t la, lb;
    char *a = all_records(mn, c, o.kinds, &la), *b = all_records(other, c, o.kinds, &lb);
    int same = a && b && la == lb && memcmp(a, b, la) == 0;
    if (!same) {
        /* The forward pass over a different batch may round differently:
         * then at least every record must have the same size and windows. */
        fprintf(stderr, "note: feeds of 3 and 5 windows differ in bits\n");
    }
    CHECK(a && b && la == lb, "records of feeds of 3 and 5 windows: %zu vs %zu bytes", la, lb);
    free(a); free(b);
    lt_miner_free(other);
    free(mlp); free(att); free(arg); free(vo);
    lt_miner_free(mn);
}

/* SAE latents against the SAEs' own encode of the activation at their hook
 * point (captured before the splice changes it), one window at a time. */
static void test_sae_brute_force(lt_model *m, const lt_config *c, lt_sae **saes) {
    lt_miner_opts o = sae_opts();
    lt_miner *mn;
    CHECK_OK(lt_miner_new(m, &o, &mn));
    if (!mn) return;
    CHECK_OK(feed_range(mn, 0, NW, 5));
    CHECK(lt_miner_node_count(mn) == c->n_layer * (c->d_mlp + c->n_head) + SAE_WIDTH[0] + SAE_WIDTH[1],
          "node count %d", lt_miner_node_count(mn));

    lt_run *r;
    CHECK_OK(lt_run_new(m, &r));
    int point[N_SAES];
    float *z[N_SAES];   /* [latents, NW*T] */
    float *zt = malloc(sizeof(float) * T * 64);
    for (int a = 0; a < N_SAES; a++) {
        point[a] = lt_hook_find(m, SAE_HOOK[a]);
        CHECK_OK(lt_run_capture(r, point[a], 1));
        z[a] = malloc(sizeof(float) * (size_t)SAE_WIDTH[a] * NW * T);
    }
    for (int w = 0; w < NW; w++) {
        CHECK_OK(lt_forward(r, ids + w * T, 1, T, NULL));
        for (int a = 0; a < N_SAES; a++) {
            lt_view x = {0};
            CHECK_OK(lt_run_take_capture(r, point[a], &x));
            CHECK_OK(lt_sae_encode(saes[a], x.data, T, NULL, zt));
            lt_free(x.data);
            for (int t = 0; t < T; t++)
                for (int i = 0; i < SAE_WIDTH[a]; i++) z[a][(size_t)i * NW * T + w * T + t] = zt[t * SAE_WIDTH[a] + i];
        }
    }
    lt_run_free(r);
    int fired = 0, latents = 0;
    for (int a = 0; a < N_SAES; a++)
        for (int i = 0; i < SAE_WIDTH[a]; i++) {
            const float *zi = z[a] + (size_t)i * NW * T;
            check_node(mn, LT_MINE_SAE, SAE_LAYER[a], i, zi, NULL);
            int any = 0;
            for (int j = 0; j < NW * T; j++) any |= zi[j] != 0;
            fired += any;
            latents++;
        }
    /* The brute force means something only if most latents fire. */
    CHECK(fired >= latents * 3 / 4, "only %d of %d latents fired", fired, latents);

    lt_record_set *rs;
    CHECK_FAILS(lt_miner_record(mn, LT_MINE_SAE, 1, SAE_WIDTH[1], &rs), "sae_latent index 24 outside 0..23");

    /* Other feed sizes give records of the same size. */
    lt_miner *other;
    CHECK_OK(lt_miner_new(m, &o, &other));
    CHECK_OK(feed_range(other, 0, NW, 3));
    size_t la, lb;
    char *ra = all_records(mn, c, o.kinds, &la), *rb = all_records(other, c, o.kinds, &lb);
    CHECK(ra && rb && la == lb, "records of feeds of 3 and 5 windows: %zu vs %zu bytes", la, lb);
    free(ra); free(rb);
    lt_miner_free(other);
    for (int a = 0; a < N_SAES; a++) free(z[a]);
    free(zt);
    lt_miner_free(mn);
}

/* Which SAEs are mined, and the errors when that is not possible. */
static void test_sae_errors(const lt_config *c) {
    lt_model *m;
    lt_miner *mn = NULL;
    lt_sae *one, *two, *narrow;
    CHECK_OK(lt_model_load(check_path(MODEL), NULL, &m));
    if (!m) return;
    CHECK_OK(lt_sae_new(c->n_embd, 16, LT_SAE_RELU, 0, &one));
    CHECK_OK(lt_sae_new(c->n_embd, 16, LT_SAE_RELU, 0, &two));
    CHECK_OK(lt_sae_new(c->d_mlp, 8, LT_SAE_RELU, 0, &narrow));
    CHECK_OK(lt_model_attach_sae(m, lt_hook_find(m, "blocks.1.hook_resid_pre"), one, 1));
    lt_miner_opts o = test_opts();
    o.kinds = LT_MINE_SAE;
    o.layer_hi = 0;
    CHECK_FAILS(lt_miner_new(m, &o, &mn), "none of the 1 SAEs attached to the model has its hook point in layers 0..0");
    /* Layers 0..1 with kinds mlp + sae: layer 1's SAE only. */
    o.kinds = LT_MINE_MLP | LT_MINE_SAE;
    o.layer_hi = -1;
    CHECK_OK(lt_miner_new(m, &o, &mn));
    CHECK(lt_miner_node_count(mn) == 2 * c->d_mlp + 16, "node count %d", lt_miner_node_count(mn));
    lt_record_set *rs;
    CHECK_FAILS(lt_miner_record(mn, LT_MINE_SAE, 0, 0, &rs), "no sae_latent nodes mined in layer 0");
    CHECK_OK(lt_miner_record(mn, LT_MINE_SAE, 1, 15, &rs));
    lt_free(rs);
    /* The SAE replaced by a narrower one at the same point: a feed fails
     * instead of reading past the activation. */
    lt_model_detach_saes(m);
    CHECK_OK(lt_model_attach_sae(m, lt_hook_find(m, "blocks.1.hook_resid_pre"), two, 1));
    CHECK_OK(lt_miner_feed(mn, ids, 1, T, 0));
    lt_model_detach_saes(m);
    CHECK_OK(lt_model_attach_sae(m, lt_hook_find(m, "blocks.0.mlp.hook_post"), narrow, 1));
    CHECK_FAILS(lt_miner_feed(mn, ids, 1, T, 1), "has 8 features, the miner was made for 16");
    lt_miner_free(mn);
    /* Two SAEs in one layer would share the keys sae_latent/1/I. */
    lt_model_detach_saes(m);
    CHECK_OK(lt_model_attach_sae(m, lt_hook_find(m, "blocks.1.hook_resid_pre"), one, 1));
    CHECK_OK(lt_model_attach_sae(m, lt_hook_find(m, "blocks.1.hook_resid_post"), two, 1));
    o.kinds = LT_MINE_SAE;
    CHECK_FAILS(lt_miner_new(m, &o, &mn), "two attached SAEs are in layer 1");
    /* ... unless only one of them is mined. */
    o.kinds = LT_MINE_MLP;
    CHECK_OK(lt_miner_new(m, &o, &mn));
    lt_miner_free(mn);
    lt_model_free(m);
    lt_sae_free(one);
    lt_sae_free(two);
    lt_sae_free(narrow);
}

static void test_errors(lt_model *m) {
    lt_miner_opts o = test_opts();
    lt_miner *mn;
    o.kinds = LT_MINE_SAE;
    CHECK_FAILS(lt_miner_new(m, &o, &mn), "SAE latents");
    o = test_opts();
    o.layer_hi = 9;
    CHECK_FAILS(lt_miner_new(m, &o, &mn), "layers");
    o = test_opts();
    o.window = 100000;
    CHECK_FAILS(lt_miner_new(m, &o, &mn), "window");
    o = test_opts();
    CHECK_OK(lt_miner_new(m, &o, &mn));
    CHECK_FAILS(lt_miner_feed(mn, ids, 1, T + 1, 0), "windows of");
    CHECK_FAILS(lt_miner_record(mn, LT_MINE_MLP, 0, 1 << 20, NULL), "NULL");
    lt_record_set *rs;
    CHECK_FAILS(lt_miner_record(mn, LT_MINE_MLP, 0, 1 << 20, &rs), "outside");
    /* Before any window: empty records with NaN statistics. */
    CHECK_OK(lt_miner_record(mn, LT_MINE_MLP, 0, 0, &rs));
    CHECK(rs->n_top == 0 && rs->count == 0 && isnan(rs->mean), "empty record");
    lt_free(rs);
    lt_miner_free(mn);
}

int main(void) {
    snprintf(tmp_root, sizeof tmp_root, "/tmp/lantern-test-miner-%d", (int)getpid());
    make_ids(50257);
    killed_child(store_path("killed"), 0);
    killed_child(store_path("killed_sae"), 1);

    lt_model *m, *ms;
    lt_sae *saes[N_SAES];
    CHECK_OK(lt_model_load(check_path(MODEL), NULL, &m));
    CHECK_OK(lt_model_load(check_path(MODEL), NULL, &ms));
    if (!m || !ms) return check_summary();
    CHECK_OK(attach_saes(ms, 11, saes));
    const lt_config *c = lt_model_config(m);
    test_errors(m);
    test_sae_errors(c);
    test_brute_force(m, c);
    test_sae_brute_force(ms, c, saes);
    test_resume_after_kill(m, c, 0);
    test_resume_after_kill(ms, c, 1);
    lt_model_free(m);
    lt_model_free(ms);
    for (int i = 0; i < N_SAES; i++) lt_sae_free(saes[i]);

    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp_root);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp_root);
    return check_summary();
}
