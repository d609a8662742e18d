/*
 * lantern.h: the one public header of liblantern, the C core of the lantern
 * transformer debugger.
 *
 * Conventions (they hold for every function below):
 *   - A function that can fail returns int: 0 (LT_OK) on success, -1 (LT_ERR)
 *     on failure. The failure's message is then available from
 *     lt_last_error() (per thread) until the next failing call. Nothing in
 *     the library calls exit() or abort().
 *   - Objects are opaque handles with paired constructors and destructors
 *     (lt_x_open / lt_x_close, lt_x_new / lt_x_free). Destructors accept NULL.
 *   - Memory that a function hands to the caller (marked "caller frees") is
 *     released with lt_free().
 *   - Indices are 0-based everywhere: layers, heads, neurons, positions,
 *     token ids.
 *   - Float tensors are fp32, row-major, contiguous; lt_view describes one.
 *
 * The declarations between the ffi markers below are read verbatim by the
 * LuaJIT binding (lua/lantern/ffi.lua), so that region holds only plain C
 * declarations: no macros, no preprocessor lines.
 */
#ifndef LANTERN_H
#define LANTERN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ffi-begin */

enum { LT_OK = 0, LT_ERR = -1 };

/* ---------------------------------------------------------------- errors */

/* The message of the most recent failure on this thread ("" if none). The
 * pointer stays valid until the next failing call on the same thread. */
const char *lt_last_error(void);

/* ---------------------------------------------------------------- memory */

/* n floats, zeroed, 64-byte aligned; NULL (with an error set) when out of
 * memory. Caller frees with lt_free. */
float *lt_alloc(size_t n);
void lt_free(void *p);

/* A view of a float tensor: data is not owned by the view. */
typedef struct lt_view {
    float *data;
    int ndim;
    int64_t shape[6];
} lt_view;

int64_t lt_view_numel(const lt_view *v);

/* ----------------------------------------------------------- safetensors */

enum { LT_DTYPE_F32 = 0, LT_DTYPE_F16 = 1, LT_DTYPE_BF16 = 2, LT_DTYPE_I32 = 3, LT_DTYPE_I64 = 4 };

typedef struct lt_safetensors lt_safetensors;

typedef struct lt_st_tensor {
    const char *name;      /* owned by the file handle */
    int dtype;             /* LT_DTYPE_* */
    int ndim;
    int64_t shape[8];
    const void *data;      /* points into the mapping */
    size_t nbytes;
} lt_st_tensor;

/* Maps a .safetensors file read-only and validates its header: header length
 * inside the file, valid JSON, known dtypes, byte length equal to the shape
 * product times the dtype size, offsets inside the data section and not
 * overlapping. Errors name the file and the offending tensor. */
int lt_st_open(const char *path, lt_safetensors **out);
void lt_st_close(lt_safetensors *st);

/* Number of tensors (the __metadata__ entry is not a tensor). */
int lt_st_count(const lt_safetensors *st);
/* Tensor i in file order, 0 <= i < lt_st_count. */
int lt_st_get(const lt_safetensors *st, int i, lt_st_tensor *out);
/* Tensor by name; an error naming the tensor and the file when absent. */
int lt_st_find(const lt_safetensors *st, const char *name, lt_st_tensor *out);
/* The __metadata__ value for key, or NULL. Owned by the handle. */
const char *lt_st_metadata(const lt_safetensors *st, const char *key);
/* Copies tensor t into dst as fp32 (F16/BF16 converted, I32/I64 cast);
 * n must equal the tensor's element count. */
int lt_st_to_f32(const lt_st_tensor *t, float *dst, int64_t n);

/* Writer: collects tensors (data is borrowed until save returns) and writes
 * the file to path + ".tmp" then renames it, so a crash never leaves a
 * half-written file under the final name. */
typedef struct lt_st_writer lt_st_writer;
int lt_st_writer_new(lt_st_writer **out);
void lt_st_writer_free(lt_st_writer *w);
int lt_st_writer_add(lt_st_writer *w, const char *name, int dtype, int ndim,
                     const int64_t *shape, const void *data);
int lt_st_writer_metadata(lt_st_writer *w, const char *key, const char *value);
int lt_st_writer_save(lt_st_writer *w, const char *path);

/* Float conversions used by the loader and by tests. */
float lt_f16_to_f32(uint16_t h);
float lt_bf16_to_f32(uint16_t h);
uint16_t lt_f32_to_f16(float f);   /* round to nearest even */
uint16_t lt_f32_to_bf16(float f);  /* round to nearest even */

/* ------------------------------------------------------------- tokenizer */

typedef struct lt_tokenizer lt_tokenizer;

/* GPT-2 byte-level BPE from vocab.json and merges.txt. */
int lt_tokenizer_load(const char *vocab_json, const char *merges_txt, lt_tokenizer **out);
void lt_tokenizer_free(lt_tokenizer *tok);
int lt_tokenizer_vocab_size(const lt_tokenizer *tok);
/* Id of <|endoftext|>, or -1 when the vocabulary has none. */
int lt_tokenizer_eot(const lt_tokenizer *tok);
/* Encodes len bytes of text (any bytes; invalid UTF-8 still round-trips).
 * <|endoftext|> in the text is the special token. *ids: caller frees. */
int lt_tokenizer_encode(lt_tokenizer *tok, const char *text, size_t len, int32_t **ids, int *n);
/* Decodes n ids to bytes; *text is NUL-terminated, *len excludes the NUL.
 * Caller frees *text. An id outside the vocabulary is an error. */
int lt_tokenizer_decode(const lt_tokenizer *tok, const int32_t *ids, int n, char **text, size_t *len);
/* The vocabulary string of one id (byte-level alphabet, as in vocab.json),
 * or NULL for an id outside the vocabulary. Owned by the tokenizer. */
const char *lt_tokenizer_token_str(const lt_tokenizer *tok, int id);

/* ------------------------------------------------------------------ model */

typedef struct lt_config {
    int n_layer, n_head, n_embd, d_head, d_mlp, n_ctx, d_vocab;
    float ln_eps;
} lt_config;

typedef struct lt_model lt_model;

/* Weight processing applied at load, with TransformerLens's names; all off
 * by default so that a plain load keeps Hugging Face numerics. */
typedef struct lt_load_opts {
    int fold_ln;
    int center_writing_weights;
    int center_unembed;
    int fold_value_biases;
} lt_load_opts;

/* Loads a Hugging Face GPT-2 directory (config.json + model.safetensors).
 * Tensor names with or without the "transformer." prefix; hub mask buffers
 * (h.N.attn.bias, h.N.attn.masked_bias) skipped; lm_head tied to wte. A
 * missing, unknown or wrongly shaped tensor is an error naming it and the
 * file. opts may be NULL. */
int lt_model_load(const char *dir, const lt_load_opts *opts, lt_model **out);
/* A model with random weights (GPT-2 style init: N(0, 0.02), LayerNorm
 * weight 1, bias 0), deterministic for a seed. */
int lt_model_random(const lt_config *cfg, uint64_t seed, lt_model **out);
void lt_model_free(lt_model *m);
const lt_config *lt_model_config(const lt_model *m);
/* A parameter by its Hugging Face name without prefix ("wte.weight",
 * "h.0.attn.c_proj.weight", ...), as a writable view with the HF shape.
 * "lm_head.weight" [V, C] is the unembedding (wte while tied) and
 * "lm_head.bias" [V] exists once weight processing gave it one. */
int lt_model_param(lt_model *m, const char *name, lt_view *out);
int lt_model_param_count(const lt_model *m);
const char *lt_model_param_name(const lt_model *m, int i);
/* Writes config.json and model.safetensors (transformer.-prefixed names, as
 * save_pretrained does) into dir, creating it if needed. */
int lt_model_save(const lt_model *m, const char *dir);

/* ------------------------------------------------------------ hook points */

/* Hook kinds; a hook point is (kind, layer). Per-layer kinds use layer
 * 0..n_layer-1; global kinds (EMBED, POS_EMBED, LNF_*) use layer -1. */
enum {
    LT_HOOK_EMBED = 0, LT_HOOK_POS_EMBED,
    LT_HOOK_RESID_PRE, LT_HOOK_LN1_SCALE, LT_HOOK_LN1_NORMALIZED,
    LT_HOOK_Q, LT_HOOK_K, LT_HOOK_V, LT_HOOK_ATTN_SCORES, LT_HOOK_PATTERN,
    LT_HOOK_Z, LT_HOOK_RESULT, LT_HOOK_ATTN_OUT, LT_HOOK_RESID_MID,
    LT_HOOK_LN2_SCALE, LT_HOOK_LN2_NORMALIZED,
    LT_HOOK_MLP_PRE, LT_HOOK_MLP_POST, LT_HOOK_MLP_OUT, LT_HOOK_RESID_POST,
    LT_HOOK_LNF_SCALE, LT_HOOK_LNF_NORMALIZED,
    /* points added by an attached SAE (lt_model_attach_sae), named
     * "<point>.hook_sae_acts_pre" and so on; layer = the attached point's */
    LT_HOOK_SAE_ACTS_PRE, LT_HOOK_SAE_ACTS_POST, LT_HOOK_SAE_RECONS, LT_HOOK_SAE_ERROR,
    LT_HOOK_NKINDS
};

/* Hook points are numbered 0..lt_hook_count(m)-1. */
int lt_hook_count(const lt_model *m);
/* Point id for a TransformerLens name ("blocks.0.attn.hook_pattern"); a
 * negative layer counts from the end. -1 with an error for unknown names. */
int lt_hook_find(const lt_model *m, const char *name);
/* Canonical name of point id; NULL for an id out of range. Static storage
 * owned by the model. */
const char *lt_hook_name(const lt_model *m, int point);
int lt_hook_kind(const lt_model *m, int point);
int lt_hook_layer(const lt_model *m, int point);
/* Shape of the activation at a point for a (B, T) run; the batch dimension
 * is always included here (ndim counts it). */
int lt_hook_shape(const lt_model *m, int point, int B, int T, lt_view *out);

/* ------------------------------------------------------------------- runs */

/* A run holds the per-(B, T) buffers of forward passes, the hooks attached
 * for them and the captured activations. Buffers are reused across forward
 * calls and grown when (B, T) grows. */
typedef struct lt_run lt_run;

int lt_run_new(lt_model *m, lt_run **out);
void lt_run_free(lt_run *r);

/* Forward pass over B sequences of T ids (ids is [B, T]). On success
 * *logits points to [B, T, d_vocab] owned by the run (valid until the next
 * forward on it). Ids out of range, T > n_ctx or T == 0 are errors. */
int lt_forward(lt_run *r, const int32_t *ids, int B, int T, float **logits);

/* Mean next-token cross-entropy of the logits of the last forward
 * (predicting ids[b, t+1] from position t), over all B*(T-1) targets. */
int lt_run_loss(lt_run *r, const int32_t *ids, int B, int T, double *loss);

/* Sampling from a row of logits: temperature 0 is greedy (argmax, lowest id
 * on ties); top_k <= 0 means no top-k cut. *state is an RNG state the
 * caller seeds and keeps. */
int lt_sample(const float *logits, int n, float temperature, int top_k, uint64_t *state);

/* Capture: after each forward, the activation at point is copied into a
 * fresh buffer that lt_run_take_capture hands over (caller frees). */
int lt_run_capture(lt_run *r, int point, int on);
/* Hands over the capture of point from the last forward: out->data is then
 * owned by the caller (lt_free). Error when nothing was captured there. */
int lt_run_take_capture(lt_run *r, int point, lt_view *out);

/* A callback at a hook point. It receives a writable view of the activation
 * (batch dimension included) and may edit it in place. A non-zero return
 * aborts the forward pass with an error. */
typedef int (*lt_hook_fn)(void *ud, int point, lt_view *act);
int lt_run_add_callback(lt_run *r, int point, lt_hook_fn fn, void *ud);

/* Built-in interventions, applied in C at a point, in the order added. */
enum {
    LT_IV_ZERO = 0,   /* selected elements = 0 */
    LT_IV_SET,        /* selected elements = value */
    LT_IV_SCALE,      /* selected elements *= value */
    LT_IV_ADD,        /* selected elements += vec (indexed like the selection's last dim) or value */
    LT_IV_PATCH,      /* selected elements = src at the same index (src shaped like the activation of one batch row, or of all rows when src_rows > 1) */
    LT_IV_MEAN        /* selected elements = src at the same index without batch (a per-position mean [T, ...]) or, with src_per_position = 0, [...] broadcast over positions */
};

typedef struct lt_intervention {
    int op;
    float value;
    const float *src;          /* PATCH, MEAN; borrowed until the run is done */
    int src_rows;              /* PATCH: rows in src (1 = same source for every batch row) */
    int src_per_position;      /* MEAN: 1 if src has a position dimension */
    const float *vec;          /* ADD: optional vector; NULL means add value */
    int vec_len;
    const int32_t *positions;  /* NULL = all; negative counts from the end */
    int n_positions;
    const int32_t *heads;      /* NULL = all; only for points with a head dimension */
    int n_heads;
    const int32_t *indices;    /* NULL = all; last dimension (neurons, d_model, d_head) */
    int n_indices;
    int batch_row;             /* -1 = every row, else only that row */
} lt_intervention;

/* Copies *iv (not the arrays it points to: they are borrowed until the run
 * is freed or its hooks cleared). Validated against the point's shape at
 * forward time; a bad index is an error naming the point. */
int lt_run_add_intervention(lt_run *r, int point, const lt_intervention *iv);
/* Removes every callback and intervention (captures stay). */
void lt_run_clear_hooks(lt_run *r);
/* Removes every capture request and frees captures not taken. */
void lt_run_clear_captures(lt_run *r);

/* Activations and gradients kept for the backward pass. */

/* With on, later forward passes keep every block's activations (memory
 * grows with n_layer) so that lt_backward and lt_run_activation work. */
void lt_run_keep_activations(lt_run *r, int on);

/* TransformerLens's stop_at_layer: with layer in [0, n_layer], later
 * forward passes run blocks 0 .. layer-1 and stop there, before ln_final
 * and the unembedding (the residual stream blocks.{layer}.hook_resid_pre,
 * or ln_final's input for n_layer, is the last point computed). Their
 * logits are NULL, points after the stop are errors to read, and
 * lt_backward refuses them. -1 (the default) runs the whole model. For
 * callers that need only early activations, such as the miner. */
int lt_run_stop_at_layer(lt_run *r, int layer);
/* A borrowed view of the activation at point from the last (kept) forward
 * pass, batch dimension included; valid until the next forward. */
int lt_run_activation(lt_run *r, int point, lt_view *out);
/* A borrowed view of the gradient at point from the last lt_backward;
 * valid until the next forward or backward. */
int lt_run_grad(lt_run *r, int point, lt_view *out);

/* A gradient placed at a hook point: the backward pass starts there (it is
 * how tracing uses a node's pre-activation as the metric). grad is shaped
 * like the point's activation for the run's (B, T). */
typedef struct lt_grad_seed {
    int point;
    const float *grad;
} lt_grad_seed;

typedef struct lt_backward_opts {
    int detach_lnf_scale;     /* ln_final's scale is a constant (TDB's node table) */
    int detach_ln1_layer;     /* this layer's ln1 scale is a constant; -1 none */
    int detach_ln2_layer;     /* this layer's ln2 scale is a constant; -1 none */
    int stop_q_layer;         /* no gradient into hook_q of this layer; -1 none */
    int stop_k_layer;         /* no gradient into hook_k of this layer; -1 none */
    int stop_pattern_layer;   /* no gradient through the pattern of this layer; -1 none */
    int param_grads;          /* accumulate parameter gradients (see lt_run_param_grads) */
} lt_backward_opts;

/* Backward pass of the last forward (which must have kept its
 * activations): dlogits [B, T, V] (may be NULL) and seeds give the gradient
 * of a scalar; afterwards lt_run_grad reads the gradient at any point.
 * opts may be NULL (nothing detached, no parameter gradients). Parameter
 * gradients accumulate across calls until lt_run_zero_param_grads. */
int lt_backward(lt_run *r, const float *dlogits, const lt_grad_seed *seeds, int n_seeds, const lt_backward_opts *opts);
/* Parameter gradients, laid out like the parameter table (the order of
 * lt_model_param_name); borrowed. */
int lt_run_param_grads(lt_run *r, float **grads, size_t *n);
void lt_run_zero_param_grads(lt_run *r);

/* ------------------------------------------------------------------ fetch */

/* Downloads url to path: written to path + ".part" and renamed when
 * complete. token may be NULL (sent as a Bearer token otherwise). progress
 * draws a bar on stderr when non-zero. HTTP errors (404...), timeouts
 * (timeout_s without progress) and write failures (disk full) are errors
 * naming the URL; no partial file is left under path. */
int lt_http_download(const char *url, const char *path, const char *token,
                     int timeout_s, int progress);

/* ------------------------------------------------------------------ store */

/* The store: one LMDB environment directory holding node records,
 * explanations, scores, the LLM request cache and run metadata in named
 * databases ("meta", "models", "records", "explanations", "scores",
 * "llm_cache", "runs"). Key schema and value formats: docs/store.md.
 * Writers never block readers; readers see the snapshot of the last commit
 * before they started. One handle per store per process (LMDB's rule; a
 * second open of the same directory is an error), used by one thread at a
 * time. */

enum { LT_STORE_READONLY = 1 };
enum { LT_STORE_SCHEMA_VERSION = 1, LT_RECORD_FORMAT_VERSION = 1 };
/* lt_store_get / lt_store_get_record / lt_store_iter_next results besides
 * LT_OK and LT_ERR. */
enum { LT_STORE_NOT_FOUND = 1, LT_STORE_ITEM = 1, LT_STORE_END = 0 };

typedef struct lt_store lt_store;
typedef struct lt_store_iter lt_store_iter;

/* Opens the store in directory path. Without LT_STORE_READONLY a missing
 * directory (and its parents) is created and an empty one becomes a new
 * store. Errors: a file or a directory with other files but no data.mdb, an
 * LMDB environment without lantern metadata or a damaged data.mdb ("... is
 * not a lantern store"), a schema version newer than this build's, a store
 * already open in this process. */
int lt_store_open(const char *path, int flags, lt_store **out);
/* Closes the store: a batch not committed is discarded and iterators still
 * open are ended (their next call reports an error; free them as usual). */
void lt_store_close(lt_store *st);

/* Generic byte API. db is one of the database names above; keys are 1 to
 * 511 bytes. Outside a batch each put or del is its own durable commit;
 * inside a batch (lt_store_begin) it is buffered until lt_store_commit.
 * A del of an absent key succeeds. */
int lt_store_put(lt_store *st, const char *db, const void *key, size_t klen,
                 const void *val, size_t vlen);
int lt_store_del(lt_store *st, const char *db, const void *key, size_t klen);
/* LT_OK with a copy of the value in *val (caller frees; val may be NULL to
 * test presence), LT_STORE_NOT_FOUND, or LT_ERR. Inside a batch the batch's
 * own puts and dels are seen. */
int lt_store_get(lt_store *st, const char *db, const void *key, size_t klen,
                 void **val, size_t *vlen);

/* Batches: begin, any number of puts and dels, then commit (atomic: a crash
 * at any moment leaves all of the batch or none) or abort. The batch is kept
 * in memory until commit, which replays it after growing the map when the
 * map is full, so callers never see a full map. On a commit error the batch
 * is discarded. */
int lt_store_begin(lt_store *st);
int lt_store_commit(lt_store *st);
void lt_store_abort(lt_store *st);

/* Iterates, in key order, the entries of db whose key starts with prefix
 * (plen 0: all), in a read snapshot taken at lt_store_iter_new: later
 * commits, including this handle's, are not seen. lt_store_iter_next returns
 * LT_STORE_ITEM with key and value (val may be NULL to skip copying it;
 * pointers valid until the next call or free), LT_STORE_END, or LT_ERR. */
int lt_store_iter_new(lt_store *st, const char *db, const void *prefix, size_t plen,
                      lt_store_iter **out);
int lt_store_iter_next(lt_store_iter *it, const void **key, size_t *klen,
                       const void **val, size_t *vlen);
void lt_store_iter_free(lt_store_iter *it);

/* Number of entries in db (committed data). */
int lt_store_count(lt_store *st, const char *db, uint64_t *n);
/* Current map size in bytes (it grows as the store fills). */
size_t lt_store_map_size(const lt_store *st);

/* Writes the node key "<prefix>/<model>/<kind>/<layer:4 digits>/<index:8
 * digits>" (for example "rec/toy/mlp_neuron/0001/00000042") into buf, NUL
 * terminated. model and kind: 1 to 200 bytes, no '/' or control characters;
 * 0 <= layer <= 9999, 0 <= index <= 99999999. */
int lt_store_node_key(const char *prefix, const char *model, const char *kind,
                      int layer, int index, char *buf, size_t cap);

/* A node's activation records: token windows with one activation per token,
 * as the miner keeps them. */
typedef struct lt_act_record {
    int n;              /* tokens in the window */
    int64_t window;     /* the window's index in the dataset, -1 if unknown */
    int32_t *tokens;    /* [n] token ids */
    float *acts;        /* [n] activation per token */
    int32_t *extra;     /* [n] or NULL; attention heads: attended-to position */
} lt_act_record;

typedef struct lt_quantile_bin {
    double q_lo, q_hi;  /* the bin as quantiles of the distribution (0.5, 0.9) */
    double lo, hi;      /* the activation values at those quantiles */
    int n_records;
    lt_act_record *records;
} lt_quantile_bin;

typedef struct lt_record_set {
    double mean, variance, skewness, kurtosis;
    uint64_t count;     /* activations the statistics cover */
    int n_top;          /* top windows by maximum activation */
    lt_act_record *top;
    int n_random;       /* uniform random sample of windows */
    lt_act_record *random;
    int n_bins;         /* samples by quantile bin */
    lt_quantile_bin *bins;
} lt_record_set;

/* Encodes a record set into the binary value format (docs/store.md); *buf:
 * caller frees. Top records are written in decreasing order of their
 * maximum activation (ties keep their order); other sections as given. */
int lt_store_encode_record(const lt_record_set *rs, void **buf, size_t *len);
/* Decodes a value; *out is one allocation (caller frees it with lt_free).
 * A truncated, oversized or foreign value is an error, never a crash. */
int lt_store_decode_record(const void *buf, size_t len, lt_record_set **out);
/* Puts a node's records under its "rec/..." key (batched inside a batch). */
int lt_store_put_record(lt_store *st, const char *model, const char *kind, int layer,
                        int index, const lt_record_set *rs);
/* LT_OK with *out (caller frees with lt_free), LT_STORE_NOT_FOUND, LT_ERR. */
int lt_store_get_record(lt_store *st, const char *model, const char *kind, int layer,
                        int index, lt_record_set **out);

/* ---- attribution helpers (node table, core/src/attribution.c) ----
 * Dense loops of the Transformer Debugger node table, so that no Lua loop
 * runs over d_model. All fp32, row-major. */

/* out[M, N] = a[M, K] @ b, where b is [K, N] (trans_b = 0) or [N, K]
 * (trans_b = 1). */
int lt_attr_matmul(const float *a, const float *b, int M, int K, int N, int trans_b, float *out);
/* out[i] = norm of row i of w [rows, cols]. */
int lt_attr_row_norms(const float *w, int rows, int cols, float *out);
/* out[rows, cols] = (x - mean) / sqrt(var + eps) per row (LayerNorm without
 * its affine weights). out may equal x. */
int lt_attr_ln_rows(const float *x, int rows, int cols, float eps, float *out);
/* Per-head value write vectors of one attention layer: for key k and head h
 * the vector vo = v[k, h, :] @ W_O[h] (W_O[h] = rows h*Dh..h*Dh+Dh-1 of
 * wo [H*Dh, C]). norms[H, T] = |vo| and dots[H, T(q), T(k)] = vo . g[q],
 * with v [T, H, Dh] (hook_v) and g [T, C] a residual-stream gradient. */
int lt_attr_head_writes(const float *v, const float *wo, const float *g, int T, int H, int Dh, int C,
                        float *norms, float *dots);

/* --------------------------------------------------------------- training */

typedef struct lt_adamw_opts {
    float beta1, beta2, eps;
    float weight_decay;       /* decoupled, on matrices only (not biases or LayerNorms) */
    float grad_clip;          /* clip the global gradient norm to this; <= 0: no clipping */
} lt_adamw_opts;

/* One AdamW update of n parameters at step (1-based, for bias correction):
 * m1 = b1 m1 + (1 - b1) g; m2 = b2 m2 + (1 - b2) g^2;
 * p -= lr (m1_hat / (sqrt(m2_hat) + eps) + wd p), wd only where decay[i]
 * (decay NULL: everywhere). */
void lt_adamw_update(float *param, const float *grad, float *m1, float *m2, size_t n, float lr, const lt_adamw_opts *o,
                     const unsigned char *decay, int step);
/* Linear warmup over warmup steps to max_lr, then cosine decay to min_lr at
 * total steps. */
float lt_lr_schedule(int step, int warmup, int total, float max_lr, float min_lr);

typedef struct lt_trainer lt_trainer;
int lt_trainer_new(lt_model *m, const lt_adamw_opts *o, lt_trainer **out);
void lt_trainer_free(lt_trainer *t);
/* One step on ids [B, T] (mean next-token cross-entropy over all B*(T-1)
 * targets): forward, backward, clipping, AdamW at learning rate lr. Reports
 * the loss and the gradient norm before clipping. */
int lt_trainer_step(lt_trainer *t, const int32_t *ids, int B, int T, float lr, double *loss, double *grad_norm);
/* The same step with the loss restricted by mask [B, T]: position t of a row
 * (predicting token t + 1) counts when its byte is nonzero; the last
 * position of a row never does. The loss is the mean over the counted
 * positions; a mask with none fails. mask NULL is lt_trainer_step. */
int lt_trainer_step_masked(lt_trainer *t, const int32_t *ids, const uint8_t *mask, int B, int T, float lr, double *loss,
                           double *grad_norm);
int lt_trainer_steps(const lt_trainer *t);
/* Optimizer state (moments and step) for resuming, as a safetensors file. */
int lt_trainer_save_state(const lt_trainer *t, const char *path);
int lt_trainer_load_state(lt_trainer *t, const char *path);

/* ------------------------------------------------------------ BPE trainer */

/* Trains a GPT-2 style byte-level BPE vocabulary on len bytes of text and
 * writes vocab.json and merges.txt in the format lt_tokenizer_load reads.
 *   - The text is cut at <|endoftext|> and at each string of special (those
 *     strings are never merged into), then into pre-tokens by the same GPT-2
 *     pattern the tokenizer uses; merges never cross a pre-token.
 *   - Ids 0..255 are the 256 single bytes in GPT-2's order (the printable
 *     bytes first, as in its vocab.json), so that any bytes encode. Then come
 *     the learned merges, most frequent adjacent pair first (pair counts
 *     weighted by pre-token frequency; ties go to the pair with the smaller
 *     left id, then the smaller right id), then special[0..n_special) in
 *     order, and <|endoftext|> is always the last id (vocab_size - 1).
 *   - special may be NULL when n_special is 0; it must not list
 *     <|endoftext|> again. Its strings are stored as given.
 *   - vocab_size counts every id: 257 + n_special <= vocab_size <= 1000000.
 *     Too little text to learn that many merges is an error telling the
 *     largest vocab_size this text allows.
 *   - The result depends only on the arguments (no randomness, no threads).
 *   - Each file is written to path + ".tmp" and then renamed. */
int lt_bpe_train(const char *text, size_t len, int vocab_size,
                 const char *const *special, int n_special,
                 const char *vocab_out, const char *merges_out);

/* ------------------------------------------------------ benchmark helpers */

/* GFLOP/s of a plain cblas_sgemm C[M, N] = A[M, K] @ B[K, N] (row-major),
 * the best of reps timed calls after one warm-up call. `lantern bench`
 * prints it next to its own figures, measured in the same run. */
int lt_bench_sgemm(int M, int N, int K, int reps, double *gflops);

/* ------------------------------------------------------ sparse autoencoders */

/* A sparse autoencoder (SAE) on activations of width d_in with d_sae
 * latents, in the SAELens parameterisation (docs/sae.md):
 *   W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in],
 *   threshold [d_sae] (JumpReLU only).
 *   pre   = (x - b_dec) W_enc + b_enc     (b_dec subtracted only when
 *                                          apply_b_dec_to_input, the default)
 *   z     = act(pre)
 *   x_hat = z W_dec + b_dec
 * act: LT_SAE_RELU ("standard") max(pre, 0); LT_SAE_TOPK the k largest
 * pre-activations of each row (ties to the lower index) then ReLU, all else
 * 0; LT_SAE_JUMPRELU pre where pre > threshold and pre > 0, else 0 (as
 * SAELens: a negative threshold acts as 0).
 * An SAE is read-only during encode and decode, so any number of threads
 * may encode with one SAE at once; setters and lt_sae_param writes must not
 * run concurrently with them. */
enum { LT_SAE_RELU = 0, LT_SAE_TOPK = 1, LT_SAE_JUMPRELU = 2 };

typedef struct lt_sae lt_sae;

/* A new SAE with zero weights (see lt_sae_init_random). k is the TopK k
 * (1 <= k <= d_sae) and is ignored for other architectures.
 * apply_b_dec_to_input is on, normalize_activations "none", no hook. */
int lt_sae_new(int64_t d_in, int64_t d_sae, int arch, int k, lt_sae **out);
void lt_sae_free(lt_sae *sae);

/* Random initialisation, deterministic for a seed: W_dec rows are Gaussian
 * directions of unit norm, W_enc = W_dec^T, biases and thresholds zero. */
int lt_sae_init_random(lt_sae *sae, uint64_t seed);

int64_t lt_sae_d_in(const lt_sae *sae);
int64_t lt_sae_d_sae(const lt_sae *sae);
int lt_sae_architecture(const lt_sae *sae);      /* LT_SAE_* */
int lt_sae_k(const lt_sae *sae);                 /* 0 unless TopK */
int lt_sae_apply_b_dec_to_input(const lt_sae *sae);
/* "none", "expected_average_only_in" or "constant_norm_rescale"; static. */
const char *lt_sae_normalize_activations(const lt_sae *sae);
/* The TransformerLens hook point and model the SAE was trained on (from the
 * config's metadata), or NULL when unknown. Owned by the SAE; valid until
 * the next setter call or lt_sae_free. */
const char *lt_sae_hook_name(const lt_sae *sae);
const char *lt_sae_model_name(const lt_sae *sae);

/* Setters; name may be NULL (unknown). lt_sae_set_normalize_activations
 * accepts the modes listed above and fails on others. */
int lt_sae_set_hook_name(lt_sae *sae, const char *name);
int lt_sae_set_model_name(lt_sae *sae, const char *name);
int lt_sae_set_apply_b_dec_to_input(lt_sae *sae, int on);
int lt_sae_set_normalize_activations(lt_sae *sae, const char *mode);

/* A writable view of a parameter: "W_enc", "b_enc", "W_dec", "b_dec" or
 * "threshold" (JumpReLU only), with the shapes above. Valid until
 * lt_sae_free. */
int lt_sae_param(lt_sae *sae, const char *name, lt_view *out);

/* Encodes n rows: x [n, d_in] -> z [n, d_sae], and the pre-activations into
 * z_pre [n, d_sae] when z_pre is not NULL (z_pre and z must not overlap).
 * With normalize_activations "constant_norm_rescale" each row of x is first
 * scaled to norm sqrt(d_in) (a zero row is left as it is). Allocates only a
 * scratch buffer for the call. */
int lt_sae_encode(const lt_sae *sae, const float *x, int64_t n, float *z_pre, float *z);

/* Decodes n rows: z [n, d_sae] -> x_hat [n, d_in] = z W_dec + b_dec. When
 * few latents are non-zero (as with TopK) only the rows of W_dec of the
 * non-zero latents are read (docs/sae.md gives the measured cut-over).
 * With "constant_norm_rescale" the result is in the normalised space; use
 * lt_sae_forward to get it back at the input's scale. */
int lt_sae_decode(const lt_sae *sae, const float *z, int64_t n, float *x_hat);

/* Decodes n rows given as k (latent, value) pairs per row: idx and val are
 * [n, k]; a negative index marks an unused slot. An index >= d_sae is an
 * error (nothing is written then). */
int lt_sae_decode_sparse(const lt_sae *sae, const int32_t *idx, const float *val, int k,
                         int64_t n, float *x_hat);

/* Encode then decode: z [n, d_sae] (required) and x_hat [n, d_in], with
 * constant_norm_rescale undone on x_hat as SAELens does. */
int lt_sae_forward(const lt_sae *sae, const float *x, int64_t n, float *z, float *x_hat);

/* Folds a scalar input scaling (SAELens's norm_scaling_factor for
 * "expected_average_only_in" releases) into the weights: W_enc *= s,
 * W_dec /= s, b_dec /= s; normalize_activations becomes "none". s > 0. */
int lt_sae_fold_norm_scaling_factor(lt_sae *sae, float s);

/* Loads a SAELens directory: cfg.json and sae_weights.safetensors (F32, F16
 * or BF16). Architectures "standard", "topk" (k top level or in
 * activation_fn_kwargs) and "jumprelu"; hook_name and model_name from
 * "metadata" or the top level (older releases); a "scaling_factor" tensor
 * (finetuning_scaling_factor) is folded into W_dec. Errors name the file and
 * field or tensor: a missing file, bad JSON, an unknown architecture or
 * normalisation, a missing or wrongly shaped tensor, a missing k. */
int lt_sae_load(const char *dir, lt_sae **out);
/* Writes cfg.json and sae_weights.safetensors (F32) into dir, creating it
 * and its parents if needed. Fields of a loaded cfg.json that lantern does
 * not use are kept. Loading the result gives the same SAE exactly. */
int lt_sae_save(const lt_sae *sae, const char *dir);
/* The cfg.json that lt_sae_save would write, as a NUL-terminated string
 * (caller frees with lt_free). */
int lt_sae_cfg_json(const lt_sae *sae, char **out);

/* Splicing an SAE into a model (sae_splice.c). At the hook point the
 * activation x is replaced by decode(z') + (x - decode(z)), where z is the
 * SAE's code of x and z' is z after the hooks at <point>.hook_sae_acts_post
 * (with use_error_term = 0: by decode(z') alone). Unedited, a run is then
 * unchanged up to float rounding, and zeroing latent l moves the output by
 * exactly -z_l W_dec[l]. Adds the hook points <point>.hook_sae_acts_pre
 * [B, T, d_sae] (read-only: edits there do not change z),
 * .hook_sae_acts_post [B, T, d_sae], .hook_sae_recons [B, T, d_in] and
 * .hook_sae_error [B, T, d_in]. In the backward pass the error term is a
 * constant, so the gradient reaches the input unchanged (with the error
 * term) and the latents receive g W_dec^T. The model borrows sae until
 * lt_model_detach_saes or lt_model_free; one SAE per hook point. */
int lt_model_attach_sae(lt_model *m, int point, lt_sae *sae, int use_error_term);
/* Detaches every SAE (their hook points disappear). */
void lt_model_detach_saes(lt_model *m);
int lt_model_sae_count(const lt_model *m);

/* ------------------------------------------------------------ LLM client */

/* A client for OpenAI-compatible HTTP APIs (OpenAI, vLLM, llama.cpp's
 * server, Ollama), core/src/llm.c. It only moves JSON text: building
 * requests, parsing responses and the response cache live in Lua
 * (lua/lantern/llm.lua, docs/interp.md). */
typedef struct lt_llm lt_llm;

/* Zero fields take the default shown. */
typedef struct lt_llm_opts {
    int timeout_s;        /* whole-request limit per attempt (60) */
    int max_retries;      /* retries after the first attempt; 0 = default (5), < 0 = none */
    int max_concurrency;  /* requests in flight at once (4) */
    int backoff_ms;       /* delay before the first retry (1000); doubles per retry */
    int backoff_max_ms;   /* ceiling of the delay (10000) */
} lt_llm_opts;

/* base_url is the API root ("https://api.openai.com/v1"; a trailing '/' is
 * ignored); api_key may be NULL or "" (no Authorization header). opts may
 * be NULL. Opens no connection. */
int lt_llm_new(const char *base_url, const char *api_key, const lt_llm_opts *opts, lt_llm **out);
void lt_llm_free(lt_llm *c);

/* POSTs n JSON bodies, bodies[i] to base_url + paths[i] ("/chat/completions"
 * or "/completions"), at most max_concurrency at a time. HTTP 429, 5xx,
 * connection failures, truncated bodies and timeouts are retried after a
 * delay of backoff_ms * 2^k (at most backoff_max_ms, at least a
 * Retry-After the server sent, within that ceiling), scaled by a random
 * factor in [0.5, 1]; other statuses (400, 404, 415...) are final at once.
 * Per request i, whatever happens to the others:
 *   status[i]    the final HTTP status, 0 when no response arrived;
 *   responses[i] the final response body (any status; NUL-terminated), or
 *                NULL when none arrived;
 *   errors[i]    NULL on a 2xx status, else a message naming the URL, the
 *                status or transport error and the attempts made.
 * The caller frees every non-NULL responses[i] and errors[i] with lt_free.
 * LT_ERR only for bad arguments or when curl cannot be set up (then no
 * output is set). */
int lt_llm_request_batch(lt_llm *c, int n, const char *const *paths, const char *const *bodies,
                         char **responses, int *status, char **errors);

/* SHA-256 of len bytes as 64 lowercase hex digits and a NUL in hex[65]
 * (the key of the LLM response cache). */
void lt_sha256_hex(const void *data, size_t len, char *hex);

/* ------------------------------------------------------------------ miner */

/* The dataset miner (core/src/miner.c, docs/mining.md): one streaming pass
 * over windows of a dataset keeps, for every node of the chosen kinds and
 * layers, its top windows by maximum activation, a uniform random sample of
 * windows, samples from quantile bins of the window maxima and the moments
 * of all its token activations; lt_miner_write stores them as record sets
 * (kinds "mlp_neuron": mlp.hook_post; "attn_head": per query position the
 * attention-weighted write norm sum_k pattern[h,q,k] |v[k,h] W_O[h]|, with
 * the key of the largest term in the record's extra array; "sae_latent":
 * <point>.hook_sae_acts_post of an SAE attached with lt_model_attach_sae,
 * layer = the layer of <point>, index = the latent). Memory:
 * nodes x (top_n + n_random + 4 n_per_bin) x window x (8 or 12) bytes, plus
 * nodes x quantile_windows floats until the bin boundaries are fixed. */

/* Node kinds to mine (a mask). LT_MINE_SAE: the latents of every SAE
 * attached to the model whose hook point is in the chosen layers (SAEs
 * attached elsewhere are not mined; at least one must be in range, and at
 * most one per layer, since a latent's key is (layer, index)). */
enum { LT_MINE_MLP = 1, LT_MINE_ATTN = 2, LT_MINE_SAE = 4 };

typedef struct lt_miner_opts {
    int window;             /* tokens per window (T); default 64 */
    int top_n;              /* top windows per node; default 20 */
    int n_random;           /* random sample of windows (shared by all nodes); default 20 */
    int n_per_bin;          /* random windows kept per quantile bin; default 5 */
    int quantile_windows;   /* bin boundaries come from the maxima of the first this many windows; default 1024 */
    unsigned kinds;         /* LT_MINE_* mask; default LT_MINE_MLP */
    int layer_lo, layer_hi; /* inclusive; layer_hi -1 = the last layer; default all */
    uint64_t seed;          /* the random choices are a function of (seed, node, window count) */
} lt_miner_opts;

typedef struct lt_miner lt_miner;

void lt_miner_default_opts(lt_miner_opts *o);
/* A miner for model m (borrowed; it must outlive the miner, and the SAEs
 * attached to it must stay attached; the miner runs its own lt_run). opts
 * NULL: the defaults. */
int lt_miner_new(lt_model *m, const lt_miner_opts *opts, lt_miner **out);
void lt_miner_free(lt_miner *mn);
/* One forward pass over B windows (ids [B, T], T = opts.window) with ids
 * first_window, first_window + 1, ... in the dataset, then every node's
 * update. The result depends only on the sequence of windows fed, not on
 * how they are split into feeds or on the thread count. After a failed
 * feed (bad ids, out of memory) the miner may hold part of the batch:
 * free it. */
int lt_miner_feed(lt_miner *mn, const int32_t *ids, int B, int T, int64_t first_window);
/* Windows fed so far (after a resume: including the resumed ones). */
int64_t lt_miner_windows(const lt_miner *mn);
int lt_miner_node_count(const lt_miner *mn);
/* The current record set of one node (kind LT_MINE_MLP, LT_MINE_ATTN or
 * LT_MINE_SAE), as lt_miner_write would store it; caller frees with
 * lt_free. */
int lt_miner_record(lt_miner *mn, int kind, int layer, int index, lt_record_set **out);
/* In one store transaction (it begins and commits it, so no batch may be
 * open): every node's record set under rec/<model>/..., the miner state
 * under run/mine/<model>/state and, when info is not NULL, the text info
 * under run/mine/<model>/info. A process killed at any moment leaves the
 * previous write or this one, whole. */
int lt_miner_write(lt_miner *mn, lt_store *st, const char *model, const char *info);
/* Restores a fresh miner (made with the same options) from the last
 * lt_miner_write for model: LT_OK, LT_STORE_NOT_FOUND (no state), or LT_ERR
 * (other options; with SAE latents, other SAEs: hook point, width,
 * configuration, error term or weights; records that disagree with the
 * state; damage). Feeding
 * the windows after lt_miner_windows() then gives the store contents of an
 * uninterrupted run. */
int lt_miner_resume(lt_miner *mn, lt_store *st, const char *model);

/* ------------------------------------------------------------ SAE training */

/* Training an SAE with Adam (core/src/sae_train.c; formulas in docs/sae.md
 * "Training"). The caller streams activations [n, d_in] into buffers; the
 * trainer shuffles each buffer and steps over it in batches, all in C.
 *   standard (ReLU): loss = mean_i ||x_i - x_hat_i||^2
 *                           + l1 * mean_i sum_l z_il ||W_dec[l]||
 *     (l1 ramps up linearly over l1_warmup_steps; every resample_every
 *     steps the dead latents are re-initialised from the batch rows with
 *     the largest squared error, drawn with probability proportional to it)
 *   topk: loss = sum_i ||x_i - x_hat_i||^2 / (n variance) + aux_coeff * AuxK,
 *     variance = mean ||x - mean(x)||^2 of the init sample, AuxK =
 *     sum_i ||e_hat_i - e_i||^2 / sum_i ||e_i||^2 with e = x - x_hat
 *     (detached) and e_hat the (bias-free) decoding of each row's top k_aux
 *     dead latents.
 * A latent is dead once it has not fired for dead_rows training rows. After
 * each step W_dec's rows are renormalised to unit norm; the gradient's
 * component along each row is removed before the step. Deterministic for a
 * seed and a thread count. The SAE must be standard or topk, with
 * apply_b_dec_to_input on and normalize_activations "none". */
typedef struct lt_sae_train_opts {
    int batch;                /* rows per step (4096) */
    float lr;                 /* Adam learning rate (topk 4e-4, standard 2e-4) */
    float beta1, beta2, eps;  /* 0.9, 0.999; eps topk 6.25e-10, standard 1e-8 */
    int64_t lr_warmup_steps;  /* linear warm-up of lr (0) */
    int64_t total_steps;      /* > 0: lr decays linearly to 0 over the last */
    float lr_decay_frac;      /*   lr_decay_frac of total_steps (0.2) */
    float l1_coeff;           /* standard: lambda (5) */
    int64_t l1_warmup_steps;  /* standard: lambda ramps up over these steps (0) */
    int64_t dead_rows;        /* rows without firing after which a latent is dead (1e7) */
    int k_aux;                /* topk: AuxK latents per row (0: min(256, d_in / 2)) */
    float aux_coeff;          /* topk: weight of AuxK (1/32) */
    int64_t resample_every;   /* standard: steps between resamplings (2500; 0 = never) */
    int64_t resample_until;   /* standard: no resampling after this step (0 = no limit) */
    int normalize;            /* 1: train on x * s with s = sqrt(d_in) / mean ||x|| of the
                                 init sample, folded into the weights by finish (1) */
    int median_rows;          /* rows of the init sample used (4096) */
    uint64_t seed;            /* initial weights, shuffles, resampling (0) */
} lt_sae_train_opts;

typedef struct lt_sae_train_stats {
    int64_t steps, rows;        /* totals since the trainer was made */
    int64_t batch_steps;        /* steps taken by the last call */
    double loss, aux_loss;      /* means over the last call's steps */
    double mse;                 /* mean ||x - x_hat||^2 per row (scaled space) */
    double explained_variance;  /* 1 - sum ||x - x_hat||^2 / sum ||x - batch mean||^2, last call */
    double l0;                  /* mean non-zero latents per row, last call */
    double dead_fraction;       /* latents dead now */
    double lr, l1_coeff;        /* current values */
    int64_t resampled;          /* latents resampled so far */
} lt_sae_train_stats;

typedef struct lt_sae_trainer lt_sae_trainer;

void lt_sae_train_default_opts(int arch, lt_sae_train_opts *o);
/* A trainer of sae (borrowed until lt_sae_trainer_free). opts NULL: the
 * defaults for the SAE's architecture. Allocates the workspace: about
 * 5 d_in d_sae floats (+1 for topk) besides the SAE, plus batch x d_sae x 2. */
int lt_sae_trainer_new(lt_sae *sae, const lt_sae_train_opts *opts, lt_sae_trainer **out);
void lt_sae_trainer_free(lt_sae_trainer *t);
/* Overwrites the SAE's weights: random init (seed), b_dec = geometric
 * median (Weiszfeld) of up to median_rows evenly spaced rows of x [n, d_in],
 * and fixes the input scale and the topk variance from them. */
int lt_sae_trainer_init(lt_sae_trainer *t, const float *x, int64_t n);
/* Shuffles the n rows of x (x itself is not changed) and takes one step per
 * full batch (a last partial batch is left out). stats may be NULL. */
int lt_sae_trainer_train(lt_sae_trainer *t, const float *x, int64_t n, lt_sae_train_stats *stats);
/* Folds the input scale into the weights (W_enc *= s, W_dec /= s,
 * b_dec /= s) so that the SAE takes raw activations; no training after. */
int lt_sae_trainer_finish(lt_sae_trainer *t);
/* The input scale s (1 without normalisation). */
double lt_sae_trainer_scale(const lt_sae_trainer *t);
/* The training loss on n rows of x (already scaled) and its gradient,
 * written into grad (an SAE of the same shape used as storage), with
 * opts->l1_coeff (no warm-up), opts->aux_coeff, opts->k_aux and the given
 * variance (topk) and dead mask [d_sae] (NULL: none dead). No projection,
 * no step: for tests and for checking the hand-written backward. */
int lt_sae_loss_grad(lt_sae *sae, const float *x, int64_t n, const lt_sae_train_opts *opts, double variance,
                     const uint8_t *dead, double *loss, lt_sae *grad);

/* Sums for the evaluation metrics over rows x [n, d_in] (lt_sae_forward,
 * so with the SAE's own normalisation): the caller zeroes the struct and
 * allocates sum_x [d_in] and fires [d_sae] (zeroed), then calls this on
 * any number of chunks. fires[l] counts the rows where latent l != 0. */
typedef struct lt_sae_eval_acc {
    int64_t rows;
    double sq_err;      /* sum ||x - x_hat||^2 */
    double sq_x;        /* sum ||x||^2 */
    double l0, l1;      /* sums over rows of #(z != 0) and sum |z| */
    double *sum_x;      /* [d_in] sum of x */
    int64_t *fires;     /* [d_sae] */
} lt_sae_eval_acc;
int lt_sae_eval_accumulate(const lt_sae *sae, const float *x, int64_t n, lt_sae_eval_acc *acc);

/* ffi-end */

#ifdef __cplusplus
}
#endif

#endif /* LANTERN_H */
