"""More quantized goldens (issue 29): GPTQ with act-order and asymmetric zeros in groups of 128, and
FP8 with tied embeddings, written by the reference script's own functions (scripts/golden/make_refs.py,
a copy of ../shared/golden/make_refs.py) on other configurations. Run where torch and transformers are
(the GPU machine):

  python3 scripts/make_quant_refs.py OUT_DIR

Only make_refs.py's imports, constants and function definitions are taken (its top-level cases and
the tokenizer copies, which need its IN_DIR, are skipped); the models land in OUT_DIR/gptq/<name>
and OUT_DIR/fp8/<name> with golden.safetensors as in ../shared/golden.
"""
import ast, os, sys

here = os.path.dirname(os.path.abspath(__file__))
src = open(os.path.join(here, "golden", "make_refs.py")).read()
tree = ast.parse(src)
keep = []
for node in tree.body:
    if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef)):
        keep.append(node)
    elif isinstance(node, ast.Assign) and all(isinstance(t, (ast.Name, ast.Tuple)) for t in node.targets):
        names = {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        if names & {"IN", "OUT", "log", "FP8_MAX"}:
            keep.append(node)
module = ast.Module(body=keep, type_ignores=[])
out = sys.argv[1]
sys.argv = [sys.argv[0], out, out]  # make_refs.py reads IN, OUT from argv; IN is unused by the cases below
os.makedirs(out, exist_ok=True)
g = {"__name__": "make_refs"}
exec(compile(module, os.path.join(here, "golden", "make_refs.py"), "exec"), g)
tf = g["tf"]

# GPTQ: hidden 256 and FFN 512 (two and four groups of 128 along `in`), act-order, asymmetric zeros.
g["gptq_model"]("gptq-llama-g128-actorder-asym", tf.LlamaForCausalLM,
                tf.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                               tie_word_embeddings=False), 128, True, False, 73)
# GPTQ: groups of 128 in order, symmetric (the tensor-core GEMV's in-order case).
g["gptq_model"]("gptq-llama-g128", tf.LlamaForCausalLM,
                tf.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                               tie_word_embeddings=False), 128, False, True, 79)
# FP8 with the embedding tied to the LM head.
g["fp8_model"]("fp8-llama-tied", tf.LlamaForCausalLM,
               tf.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                              tie_word_embeddings=True), 67)
