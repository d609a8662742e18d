/*
 * model_internal.h: the model and run structures shared by model.c,
 * weights.c, hook_points.c, forward.c, run.c and intervene.c.
 *
 * Notation in shape comments: B batch rows, T positions, N = B*T rows of the
 * residual stream, C = d_model, H = n_head, D = d_head, M = d_mlp,
 * V = d_vocab.
 */
#ifndef LANTERN_MODEL_INTERNAL_H
#define LANTERN_MODEL_INTERNAL_H

#include "internal.h"

/* One transformer block's parameters, Hugging Face layout (Conv1D: y = x W + b). */
typedef struct lt_block_params {
    float *ln1_w, *ln1_b;      /* [C] */
    float *attn_w, *attn_b;    /* [C, 3C], [3C]: columns q | k | v, heads contiguous in each */
    float *proj_w, *proj_b;    /* [C, C], [C]: W_O, rows h*D..h*D+D-1 belong to head h */
    float *ln2_w, *ln2_b;      /* [C] */
    float *fc_w, *fc_b;        /* [C, M], [M]: W_in */
    float *out_w, *out_b;      /* [M, C], [C]: W_out, row n is neuron n's write vector */
} lt_block_params;

/* One named parameter tensor: the table that loading, saving, random init
 * and lt_model_param all walk. */
typedef struct lt_param {
    char name[64];             /* Hugging Face name without "transformer." */
    int ndim;
    int64_t shape[2];
    float *data;               /* points into lt_model.params */
} lt_param;

struct lt_model {
    lt_config cfg;
    float *params;             /* every parameter, one allocation */
    size_t n_params;
    lt_param *table;
    int n_table;

    float *wte;                /* [V, C] */
    float *wpe;                /* [n_ctx, C] */
    lt_block_params *blocks;   /* [n_layer] */
    float *lnf_w, *lnf_b;      /* [C] */
    /* Unembedding, [V, C] like wte: the same memory as wte unless weight
     * processing untied it (then it is a table entry "lm_head.weight",
     * with a bias "lm_head.bias" [V]). */
    float *unembed_w;
    float *unembed_b;          /* [V] or NULL */

    char **hook_names;         /* [n_hooks], canonical TransformerLens names */
    int n_hooks;
    int n_static_hooks;        /* points of the model itself; SAE points follow */

    struct lt_sae_attachment *saes;   /* [n_saes] */
    int n_saes;
};

/* An SAE spliced in at a hook point; its four hook points are numbered
 * n_static_hooks + 4 * i + (kind - LT_HOOK_SAE_ACTS_PRE). */
typedef struct lt_sae_attachment {
    int point;
    lt_sae *sae;
    int use_error;
    int64_t d_in, d_sae;
} lt_sae_attachment;

/* The attachment index at a static point, or -1. */
static inline int lt_sae_at(const lt_model *m, int point) {
    for (int i = 0; i < m->n_saes; i++)
        if (m->saes[i].point == point) return i;
    return -1;
}

/* Hook point numbering: 0 hook_embed, 1 hook_pos_embed, then per layer the
 * kinds LT_HOOK_RESID_PRE..LT_HOOK_RESID_POST, then the two ln_final points. */
enum { LT_KINDS_PER_LAYER = LT_HOOK_RESID_POST - LT_HOOK_RESID_PRE + 1 };

static inline int lt_point(const lt_model *m, int kind, int layer) {
    if (kind == LT_HOOK_EMBED) return 0;
    if (kind == LT_HOOK_POS_EMBED) return 1;
    if (kind == LT_HOOK_LNF_SCALE || kind == LT_HOOK_LNF_NORMALIZED)
        return 2 + m->cfg.n_layer * LT_KINDS_PER_LAYER + (kind - LT_HOOK_LNF_SCALE);
    return 2 + layer * LT_KINDS_PER_LAYER + (kind - LT_HOOK_RESID_PRE);
}

int lt_hook_names_build(lt_model *m);
void lt_hook_names_free(lt_model *m);

/* Builds the parameter table and allocates params for m->cfg (zeroed). */
int lt_model_alloc(lt_model *m);
/* Applies the TransformerLens weight processing chosen in opts. */
int lt_weights_process(lt_model *m, const lt_load_opts *opts);

/* ---------------------------------------------------------------- runs */

/* Activations of one block for one forward pass. */
typedef struct lt_block_acts {
    float *ln1_mean, *ln1_scale;   /* [N] */
    float *ln1_norm, *ln1_out;     /* [N, C] */
    float *q, *k, *v;              /* [N, C] = [B, T, H, D] */
    float *scores, *pattern;       /* [B, H, T, T] */
    float *z;                      /* [N, C] = [B, T, H, D] */
    float *result;                 /* [N, H, C], only when asked for */
    float *attn_out, *resid_mid;   /* [N, C] */
    float *ln2_mean, *ln2_scale;   /* [N] */
    float *ln2_norm, *ln2_out;     /* [N, C] */
    float *mlp_pre, *mlp_post;     /* [N, M] */
    float *mlp_out;                /* [N, C] */
} lt_block_acts;

/* What is attached to one hook point for a run. */
typedef struct lt_hook_entry {
    int is_callback;
    lt_hook_fn fn;
    void *ud;
    lt_intervention iv;
} lt_hook_entry;

typedef struct lt_point_state {
    lt_hook_entry *entries;
    int n_entries, cap_entries;
    int capture;                   /* copy the activation after the hooks */
    float *captured;               /* [shape] owned until taken */
    lt_view captured_view;
} lt_point_state;

/* Every activation of a forward pass; the backward pass keeps its
 * gradients in a second lt_acts of the same layout. */
typedef struct lt_acts {
    float *embed, *pos_embed;      /* [N, C] */
    float **resid;                 /* [n_layer + 1] of [N, C]: resid[l] = resid_pre of block l */
    lt_block_acts *blocks;         /* [n_layer] (one shared slice unless keep_all) */
    float *lnf_mean, *lnf_scale;   /* [N] */
    float *lnf_norm, *lnf_out;     /* [N, C] */
    float *logits;                 /* [N, V] */
} lt_acts;

struct lt_run {
    lt_model *m;
    int B, T;                      /* shape of the last forward */
    int keep_all;                  /* every block keeps its own activations (for backward) */
    int want_keep;                 /* lt_run_keep_activations: forward keeps all */
    int stop_at;                   /* lt_run_stop_at_layer: blocks run, or -1 for the whole model */
    int ran_layers;                /* blocks the last forward ran */
    int has_logits;                /* the last forward ran to the logits (no stop) */
    int has_result;                /* result buffers allocated */
    int has_grads;                 /* g holds the gradients of the last backward */

    float *slab, *gslab;           /* activation and gradient memory, one allocation each */
    size_t slab_floats, gslab_floats;
    lt_acts a;                     /* activations */
    lt_acts g;                     /* gradients (after lt_backward) */
    float *param_grads;            /* [n_params] when asked for */
    int32_t *ids;                  /* [B, T] of the last forward */
    size_t ids_cap;

    lt_point_state *points;        /* [n_points] */
    int n_points;                  /* m->n_hooks when the points were last synced */

    /* per SAE attachment, [N, d_sae] or [N, d_in] buffers of the last pass */
    struct lt_sae_bufs *sae_bufs;
    int n_sae_bufs;
    int any_hooks;                 /* fast path: nothing attached anywhere */
};

/* Sizes and carves the activation buffers for a (B, T) forward pass. */
int lt_run_reserve(lt_run *r, int B, int T, int keep_all, int with_result);
/* Sizes and carves the gradient buffers like the activations (zeroed). */
int lt_run_reserve_grads(lt_run *r);
/* The buffer of a hook point inside an lt_acts, or NULL (hook_result when
 * it was not computed). */
float *lt_acts_point(const lt_run *r, const lt_acts *a, int point);
/* Forward pass; keep_all keeps every block's activations for backward. */
int lt_forward_ex(lt_run *r, const int32_t *ids, int B, int T, int keep_all, float **logits);
/* Grows r->points when SAEs added hook points to the model. */
int lt_run_sync_points(lt_run *r);
/* The SAE splice at an attached point (forward), and its backward: g is
 * the gradient at the point's output, replaced by the gradient at its input. */
int lt_sae_splice_forward(lt_run *r, int attachment, float *x);
typedef int (*lt_point_grad_fn)(void *ctx, int point, float *grad);
int lt_sae_splice_backward(lt_run *r, int attachment, float *g, lt_point_grad_fn at_point, void *ctx);
/* Buffers of SAE points (activations, or gradients when grad). */
float *lt_sae_point_data(const lt_run *r, int point, int grad);
void lt_sae_bufs_free(lt_run *r);
/* Runs the hooks of point on data (shape from lt_hook_shape at r->B, r->T). */
int lt_run_hook(lt_run *r, int point, float *data);
/* Whether a point has callbacks or interventions (an edit may happen). */
int lt_run_point_edited(const lt_run *r, int point);
int lt_run_point_active(const lt_run *r, int point);
/* Applies one intervention to a view of the point's activation. */
int lt_intervention_apply(const lt_model *m, int point, const lt_intervention *iv, lt_view *act);

#endif
