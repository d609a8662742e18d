/*
 * pretokenize.h: GPT-2's pre-tokeniser and byte-level alphabet, shared by
 * the tokenizer and the BPE trainer (private to the core), so that training
 * and encoding cut and spell text in exactly the same way.
 */
#ifndef LANTERN_PRETOKENIZE_H
#define LANTERN_PRETOKENIZE_H

#include <stddef.h>
#include <stdint.h>

/* End (exclusive) of the pre-token that starts at s[i], for i < n: the match
 * of GPT-2's pattern there. Any bytes are accepted (invalid UTF-8 bytes are
 * characters of their own), and the result is always > i. */
size_t lt_pretoken_end(const unsigned char *s, size_t n, size_t i);

/* GPT-2's bytes_to_unicode: bytes 33..126, 161..172 and 174..255 stand for
 * themselves; the other 68 (controls, space, DEL, NBSP, soft hyphen...) are
 * moved to U+0100, U+0101, ... in increasing byte order, so that every token
 * in vocab.json is printable. Fills cp_of_byte. */
void lt_byte_level_map(uint32_t cp_of_byte[256]);

#endif
