/*
 * pretokenize.h: GPT-2's pre-tokeniser, shared by the tokenizer and the BPE
 * trainer (private to the core), so that training and encoding cut text at
 * exactly the same places.
 */
#ifndef LANTERN_PRETOKENIZE_H
#define LANTERN_PRETOKENIZE_H

#include <stddef.h>

/* End (exclusive) of the pre-token that starts at s[i], for i < n: the match
 * of GPT-2's pattern there. Any bytes are accepted (invalid UTF-8 bytes are
 * characters of their own), and the result is always > i. */
size_t lt_pretoken_end(const unsigned char *s, size_t n, size_t i);

#endif
