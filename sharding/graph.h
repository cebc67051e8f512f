// The model graph tpx plans and executes: nodes (an op kind, named inputs, attributes,
// sharding hints) and values (a shape and a dtype, their producer and users). Built on "meta":
// shapes only, no data. Invariants: a value's `users` lists exactly the live nodes that read
// it; `order()` is topological after cleanup(); removed nodes are skipped everywhere.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "loader/slice.h"

namespace tpx {

// -1 stands for the token dimension (batch x sequence), known only at run time.
using Shape = std::vector<int64_t>;
constexpr int64_t kTokens = -1;
std::string shape_text(const Shape& s);
// Elements of a (concrete) shape.
int64_t shape_numel(const Shape& s);

using Attr = std::variant<int64_t, double, std::string, std::vector<int64_t>>;

// One contiguous piece of a parameter as a rank holds it: a slice of a checkpoint tensor, or
// `zeros` elements of padding. A parameter is its pieces laid end to end (concatenated along
// dim 0, the only dimension tpx concatenates on).
struct Piece {
    std::string tensor;   // checkpoint tensor; empty for padding
    Slice slice;          // the part of `tensor` (Slice::whole() = all of it)
    int64_t zeros = 0;    // padding elements when `tensor` is empty
    int64_t elements = 0; // elements this piece contributes
};

// How a segment of a parameter is split across ranks (the sharding hint of that segment).
enum class SplitRule {
    kReplicate,      // every rank holds all of it
    kColwise,        // dim 0 split tp ways (output features: heads, intermediate)
    kColwiseKv,      // dim 0 over KV heads: split, or replicated when kv_heads < tp
    kRowwise,        // dim 1 split tp ways (input features), followed by all_reduce
    kVocab,          // dim 0 padded to a multiple of tp, then split
    kExpertColwise,  // expert `expert` kept by its EP group, dim 0 split within the group
    kExpertRowwise,  // expert `expert` kept by its EP group, dim 1 split within the group
};
const char* split_rule_name(SplitRule r);

// A source tensor that is part of a parameter before sharding, with its split rule.
struct Segment {
    std::string tensor;
    Shape shape;              // the checkpoint tensor's full shape (with index: the part of the entry)
    SplitRule rule = SplitRule::kReplicate;
    int64_t granule = 1;      // splits must keep multiples of this along the split dim (head_dim)
    int64_t expert = -1;      // for the expert rules
    // A part of a stacked tensor (transformers 5's experts.gate_up_proj [E, 2I, H]): entry
    // `index` of its dim 0, rows [offset, offset + shape[0]) of that entry; tensor_shape is the
    // whole tensor's, for the header check. index -1: the segment is the whole tensor.
    int64_t index = -1;
    int64_t offset = 0;
    Shape tensor_shape;
};

// What a "param" node loads: its segments before sharding, and after sharding, per rank, the
// pieces and the local shape (the same on every rank: tpx's sharding is SPMD).
struct ParamSpec {
    std::vector<Segment> segments;
    Shape stack;                              // leading dims of a stacked param, e.g. {local experts}
    std::vector<std::vector<Piece>> by_rank;  // filled by detect_sharding; empty = unsharded
};

// The ops tpx plans and executes (docs/PLANNER.md lists their shape rules). A node's name for
// its op (`Node::op`) is the serialised form; `Node::kind` is parsed from it once, when the node
// is made (Graph::add, Graph::from_json), so executors dispatch with a switch.
enum class Op {
    kUnknown,  // a name tpx has no op for (executors refuse it)
    kInput,
    kParam,
    kEmbedding,
    kRmsnorm,
    kAdd,
    kAddRmsnorm,
    kAllreduceAddRmsnorm,
    kLinear,
    kSplit,
    kRope,
    kAttention,
    kSiluMul,
    kMoe,
    kAllReduce,
    kAllGather,
};
const char* op_name(Op op);
Op parse_op(const std::string& name);

struct Node;

struct Value {
    int id = 0;
    std::string name;
    Shape shape;
    std::string dtype = "float32";
    Node* producer = nullptr;
    std::vector<Node*> users;
};

struct Node {
    int id = 0;
    std::string op;      // "param", "linear", "attention", "all_reduce", ... (see docs/PLANNER.md)
    Op kind = Op::kUnknown;  // parse_op(op), set with it
    std::string name;    // unique, e.g. "layers.0.attn.q_proj"
    std::vector<Value*> inputs;
    std::vector<Value*> outputs;
    std::map<std::string, Attr> attrs;
    std::map<std::string, std::string> hints;  // sharding hints (tp_mode, layer_type, min_local_shape)
    std::shared_ptr<ParamSpec> param;          // for op == "param"
    bool removed = false;

    Value* out(size_t i = 0) const { return outputs.at(i); }
    int64_t attr_int(const std::string& key) const;
    double attr_double(const std::string& key) const;
    const std::string& attr_str(const std::string& key) const;
    bool has_attr(const std::string& key) const { return attrs.count(key) != 0; }
};

class Graph {
public:
    Graph() = default;
    Graph(const Graph&) = delete;
    Graph& operator=(const Graph&) = delete;
    Graph(Graph&&) = default;
    Graph& operator=(Graph&&) = default;

    // Adds a node after the current last one; its outputs get `out_shapes` (one value each).
    Node* add(const std::string& op, const std::string& name, const std::vector<Value*>& inputs,
              const std::vector<Shape>& out_shapes, std::map<std::string, Attr> attrs = {});
    Node* add_param(const std::string& name, const Shape& shape, std::shared_ptr<ParamSpec> spec,
                    const std::string& dtype);

    // Every use of `from` (node inputs and graph outputs) becomes a use of `to`.
    void replace_all_uses_with(Value* from, Value* to);
    // Replaces input `index` of `node`, keeping users lists right.
    void set_input(Node* node, size_t index, Value* value);
    // The node stops counting: its inputs forget it as a user. cleanup() deletes it.
    void mark_removed(Node* node);
    // Drops removed and dead nodes (no output used, not an output) and restores topological
    // order; returns the number of nodes dropped.
    int cleanup();
    bool is_clean() const;

    // Recomputes every output shape from the inputs and attributes (docs/PLANNER.md lists the
    // rules); throws Error naming the node on a mismatch.
    void propagate_shapes();

    void mark_output(Value* v) { outputs_.push_back(v); }
    // The graph's outputs become `outs` (a pipeline stage's graph ends at its boundary value).
    void set_outputs(std::vector<Value*> outs) { outputs_ = std::move(outs); }
    const std::vector<Value*>& outputs() const { return outputs_; }
    // Live nodes in order.
    std::vector<Node*> nodes() const;
    Node* find(const std::string& name) const;
    size_t size() const;

    std::string dump() const;    // readable text, one node a line
    std::string to_dot() const;  // Graphviz
    nlohmann::json to_json() const;
    static Graph from_json(const nlohmann::json& j);

private:
    Value* new_value(const std::string& name, const Shape& shape, Node* producer);

    std::vector<std::unique_ptr<Node>> nodes_;  // insertion or topological order
    std::vector<std::unique_ptr<Value>> values_;
    std::vector<Value*> outputs_;
    int next_id_ = 0;
};

}  // namespace tpx
