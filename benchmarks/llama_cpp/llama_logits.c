/* Reads a GGUF file with llama.cpp itself and writes what tunelab's export checks compare:
 * the token ids llama.cpp's tokenizer gives a text, and the logits of every position of a token sequence.
 *
 *   llama_logits MODEL.gguf TEXT_FILE IDS OUT_LOGITS OUT_TOKENS
 *
 * TEXT_FILE: UTF-8 text to tokenize (special tokens parsed, no BOS added); IDS: comma-separated token ids to
 * run; OUT_LOGITS: float32 (len(IDS), n_vocab), row-major; OUT_TOKENS: the text's ids, space-separated.
 * Build (benchmarks/scripts/llama_cpp_check.py does it): cc -O2 llama_logits.c -I<llama.cpp>/include
 * -I<llama.cpp>/ggml/include -L<build>/bin -lllama -o llama_logits
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static void quiet(enum ggml_log_level level, const char *text, void *user) {
    (void) user;
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static char *read_file(const char *path, long *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc(*len + 1);
    if (fread(buf, 1, *len, f) != (size_t) *len) { fclose(f); free(buf); return NULL; }
    buf[*len] = 0;
    fclose(f);
    return buf;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s MODEL.gguf TEXT_FILE IDS OUT_LOGITS OUT_TOKENS\n", argv[0]);
        return 1;
    }
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "%s: llama.cpp could not load it\n", argv[1]); return 2; }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);

    long len = 0;
    char *text = read_file(argv[2], &len);
    if (!text) { fprintf(stderr, "%s: cannot read\n", argv[2]); return 1; }
    int cap = (int) len + 16;
    llama_token *toks = malloc(sizeof(llama_token) * cap);
    int n = llama_tokenize(vocab, text, (int) len, toks, cap, false, true);
    if (n < 0) { fprintf(stderr, "tokenize failed (%d)\n", n); return 3; }
    FILE *ft = fopen(argv[5], "w");
    for (int i = 0; i < n; i++) fprintf(ft, i ? " %d" : "%d", toks[i]);
    fclose(ft);

    int nids = 1;
    for (const char *p = argv[3]; *p; p++) nids += *p == ',';
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = nids < 64 ? 64 : nids;
    cp.n_batch = cp.n_ctx;
    cp.n_ubatch = cp.n_ctx;
    cp.n_threads = 1;
    cp.n_threads_batch = 1;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "no context\n"); return 2; }
    struct llama_batch b = llama_batch_init(nids, 0, 1);
    char *ids = strdup(argv[3]);
    int i = 0;
    for (char *tok = strtok(ids, ","); tok; tok = strtok(NULL, ","), i++) {
        b.token[i] = atoi(tok);
        b.pos[i] = i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = 1;
    }
    b.n_tokens = i;
    if (llama_decode(ctx, b) != 0) { fprintf(stderr, "decode failed\n"); return 4; }
    int nv = llama_vocab_n_tokens(vocab);
    FILE *fl = fopen(argv[4], "wb");
    for (int j = 0; j < i; j++) fwrite(llama_get_logits_ith(ctx, j), sizeof(float), nv, fl);
    fclose(fl);
    llama_batch_free(b);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
