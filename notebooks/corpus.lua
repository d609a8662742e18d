-- Writes a split of the natural-text corpus (Debian's fortunes, see
-- docs/datasets.md) to a text file, documents separated by <|endoftext|>,
-- for `lantern mine --data FILE`.
--
--   ./scripts/lantern run notebooks/corpus.lua store/fortunes-test.txt [test|train]
local lt = require("lantern")
local path, split = arg[1], arg[2] or "test"
if not path then error("usage: lantern run notebooks/corpus.lua OUT.txt [test|train]", 0) end
local docs = lt.datasets.text_docs(split)
require("lantern.files").write(path, table.concat(docs, lt.datasets.EOT) .. lt.datasets.EOT)
local bytes = 0
for _, d in ipairs(docs) do bytes = bytes + #d end
print(string.format("wrote %d %s documents (%.1f KB of text) to %s", #docs, split, bytes / 1024, path))
