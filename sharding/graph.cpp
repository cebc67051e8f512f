// Graph construction, rewiring, cleanup, shape propagation, text/DOT dumps and JSON.
#include "sharding/graph.h"

#include <algorithm>
#include <queue>
#include <set>
#include <sstream>
#include <utility>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace tpx {

std::string shape_text(const Shape& s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + (s[i] == kTokens ? std::string("T") : std::to_string(s[i]));
    return out + "]";
}

int64_t shape_numel(const Shape& s) {
    int64_t n = 1;
    for (int64_t d : s) n *= d;
    return n;
}

const char* split_rule_name(SplitRule r) {
    switch (r) {
        case SplitRule::kReplicate: return "replicate";
        case SplitRule::kColwise: return "colwise";
        case SplitRule::kColwiseKv: return "colwise_kv";
        case SplitRule::kRowwise: return "rowwise";
        case SplitRule::kVocab: return "vocab";
        case SplitRule::kExpertColwise: return "expert_colwise";
        case SplitRule::kExpertRowwise: return "expert_rowwise";
    }
    return "?";
}

static SplitRule split_rule_from(const std::string& s) {
    for (SplitRule r : {SplitRule::kReplicate, SplitRule::kColwise, SplitRule::kColwiseKv, SplitRule::kRowwise,
                        SplitRule::kVocab, SplitRule::kExpertColwise, SplitRule::kExpertRowwise})
        if (s == split_rule_name(r)) return r;
    throw Error("unknown split rule '" + s + "' in a plan");
}

int64_t Node::attr_int(const std::string& key) const {
    auto it = attrs.find(key);
    if (it == attrs.end() || !std::holds_alternative<int64_t>(it->second))
        throw Error("node " + name + " (" + op + ") has no integer attribute '" + key + "'");
    return std::get<int64_t>(it->second);
}

double Node::attr_double(const std::string& key) const {
    auto it = attrs.find(key);
    if (it == attrs.end()) throw Error("node " + name + " (" + op + ") has no attribute '" + key + "'");
    if (std::holds_alternative<int64_t>(it->second)) return (double)std::get<int64_t>(it->second);
    if (!std::holds_alternative<double>(it->second)) throw Error("node " + name + ": attribute '" + key + "' is not a number");
    return std::get<double>(it->second);
}

const std::string& Node::attr_str(const std::string& key) const {
    auto it = attrs.find(key);
    if (it == attrs.end() || !std::holds_alternative<std::string>(it->second))
        throw Error("node " + name + " (" + op + ") has no string attribute '" + key + "'");
    return std::get<std::string>(it->second);
}

Value* Graph::new_value(const std::string& name, const Shape& shape, Node* producer) {
    values_.push_back(std::make_unique<Value>());
    Value* v = values_.back().get();
    v->id = next_id_++;
    v->name = name;
    v->shape = shape;
    v->producer = producer;
    return v;
}

namespace {
constexpr std::pair<Op, const char*> kOpNames[] = {
    {Op::kInput, "input"},
    {Op::kParam, "param"},
    {Op::kEmbedding, "embedding"},
    {Op::kRmsnorm, "rmsnorm"},
    {Op::kAdd, "add"},
    {Op::kAddRmsnorm, "add_rmsnorm"},
    {Op::kAllreduceAddRmsnorm, "allreduce_add_rmsnorm"},
    {Op::kLinear, "linear"},
    {Op::kSplit, "split"},
    {Op::kRope, "rope"},
    {Op::kAttention, "attention"},
    {Op::kSiluMul, "silu_mul"},
    {Op::kMoe, "moe"},
    {Op::kAllReduce, "all_reduce"},
    {Op::kAllGather, "all_gather"},
};
}  // namespace

const char* op_name(Op op) {
    for (const auto& [k, name] : kOpNames)
        if (k == op) return name;
    return "unknown";
}

Op parse_op(const std::string& name) {
    for (const auto& [k, n] : kOpNames)
        if (name == n) return k;
    return Op::kUnknown;
}

Node* Graph::add(const std::string& op, const std::string& name, const std::vector<Value*>& inputs,
                 const std::vector<Shape>& out_shapes, std::map<std::string, Attr> attrs) {
    nodes_.push_back(std::make_unique<Node>());
    Node* n = nodes_.back().get();
    n->id = next_id_++;
    n->op = op;
    n->kind = parse_op(op);
    n->name = name;
    n->inputs = inputs;
    n->attrs = std::move(attrs);
    for (Value* in : inputs) in->users.push_back(n);
    for (size_t i = 0; i < out_shapes.size(); ++i)
        n->outputs.push_back(new_value(out_shapes.size() == 1 ? name : name + "." + std::to_string(i), out_shapes[i], n));
    return n;
}

Node* Graph::add_param(const std::string& name, const Shape& shape, std::shared_ptr<ParamSpec> spec, const std::string& dtype) {
    Node* n = add("param", name, {}, {shape});
    n->param = std::move(spec);
    n->out()->dtype = dtype;
    return n;
}

void Graph::set_input(Node* node, size_t index, Value* value) {
    Value* old = node->inputs.at(index);
    node->inputs[index] = value;
    if (std::count(node->inputs.begin(), node->inputs.end(), old) == 0)
        old->users.erase(std::remove(old->users.begin(), old->users.end(), node), old->users.end());
    if (std::find(value->users.begin(), value->users.end(), node) == value->users.end()) value->users.push_back(node);
}

void Graph::replace_all_uses_with(Value* from, Value* to) {
    if (from == to) return;
    std::vector<Node*> users = from->users;
    for (Node* user : users)
        for (size_t i = 0; i < user->inputs.size(); ++i)
            if (user->inputs[i] == from) set_input(user, i, to);
    for (Value*& out : outputs_)
        if (out == from) out = to;
}

void Graph::mark_removed(Node* node) {
    if (node->removed) return;
    node->removed = true;
    for (Value* in : node->inputs) in->users.erase(std::remove(in->users.begin(), in->users.end(), node), in->users.end());
}

int Graph::cleanup() {
    // Dead-node elimination, repeated until stable: a node none of whose outputs is used.
    std::set<Value*> outs(outputs_.begin(), outputs_.end());
    bool changed = true;
    while (changed) {
        changed = false;
        for (auto& n : nodes_) {
            if (n->removed) continue;
            bool used = false;
            for (Value* v : n->outputs) used = used || !v->users.empty() || outs.count(v);
            if (!used) {
                mark_removed(n.get());
                changed = true;
            }
        }
    }
    size_t before = nodes_.size();
    // Topological order (Kahn), ties broken by the current order so that a clean graph keeps it.
    std::map<Node*, size_t> position;
    std::vector<Node*> live;
    for (auto& n : nodes_)
        if (!n->removed) {
            position[n.get()] = live.size();
            live.push_back(n.get());
        }
    std::map<Node*, int> pending;
    for (Node* n : live) {
        std::set<Node*> producers;
        for (Value* in : n->inputs)
            if (in->producer && !in->producer->removed) producers.insert(in->producer);
        pending[n] = (int)producers.size();
    }
    auto later = [&](Node* a, Node* b) { return position[a] > position[b]; };
    std::priority_queue<Node*, std::vector<Node*>, decltype(later)> ready(later);
    for (Node* n : live)
        if (pending[n] == 0) ready.push(n);
    std::vector<Node*> order;
    while (!ready.empty()) {
        Node* n = ready.top();
        ready.pop();
        order.push_back(n);
        std::set<Node*> seen;
        for (Value* v : n->outputs)
            for (Node* u : v->users)
                if (seen.insert(u).second && --pending[u] == 0) ready.push(u);
    }
    if (order.size() != live.size()) throw Error("graph has a cycle: " + std::to_string(live.size() - order.size()) + " nodes left unordered");
    std::vector<std::unique_ptr<Node>> kept;
    std::map<Node*, std::unique_ptr<Node>> owned;
    for (auto& n : nodes_) owned[n.get()] = std::move(n);
    for (Node* n : order) kept.push_back(std::move(owned[n]));
    nodes_ = std::move(kept);
    // Values of dropped nodes die with them; outputs and live inputs must stay.
    std::set<Value*> alive;
    for (auto& n : nodes_) {
        for (Value* v : n->outputs) alive.insert(v);
        for (Value* v : n->inputs) alive.insert(v);
    }
    values_.erase(std::remove_if(values_.begin(), values_.end(), [&](const std::unique_ptr<Value>& v) { return !alive.count(v.get()); }),
                  values_.end());
    return (int)(before - nodes_.size());
}

bool Graph::is_clean() const {
    std::set<const Node*> seen;
    for (auto& n : nodes_) {
        if (n->removed) return false;
        for (Value* in : n->inputs)
            if (in->producer && !seen.count(in->producer)) return false;
        seen.insert(n.get());
    }
    return true;
}

std::vector<Node*> Graph::nodes() const {
    std::vector<Node*> out;
    for (auto& n : nodes_)
        if (!n->removed) out.push_back(n.get());
    return out;
}

Node* Graph::find(const std::string& name) const {
    for (auto& n : nodes_)
        if (!n->removed && n->name == name) return n.get();
    return nullptr;
}

size_t Graph::size() const { return nodes().size(); }

namespace {

[[noreturn]] void shape_error(const Node* n, const std::string& what) {
    std::string ins;
    for (Value* v : n->inputs) ins += (ins.empty() ? "" : ", ") + v->name + shape_text(v->shape);
    throw Error("shape propagation: node " + n->name + " (" + n->op + "): " + what + "; inputs: " + ins);
}

void expect_inputs(const Node* n, size_t lo, size_t hi) {
    if (n->inputs.size() < lo || n->inputs.size() > hi)
        shape_error(n, "takes " + std::to_string(lo) + (lo == hi ? "" : ".." + std::to_string(hi)) + " inputs, got " +
                           std::to_string(n->inputs.size()));
}

}  // namespace

void Graph::propagate_shapes() {
    for (Node* n : nodes()) {
        const std::string& op = n->op;
        auto in = [&](size_t i) -> const Shape& { return n->inputs.at(i)->shape; };
        std::vector<Shape> out;
        if (op == "param" || op == "input") {
            continue;
        } else if (op == "embedding") {
            expect_inputs(n, 2, 2);
            if (in(1).size() != 2) shape_error(n, "the table must be 2-D");
            out = {{kTokens, in(1)[1]}};
        } else if (op == "rmsnorm" || op == "all_reduce") {
            expect_inputs(n, op == "rmsnorm" ? 2 : 1, op == "rmsnorm" ? 2 : 1);
            if (op == "rmsnorm" && in(1).back() != in(0).back()) shape_error(n, "weight width differs from the input's");
            out = {in(0)};
        } else if (op == "add") {
            expect_inputs(n, 2, 2);
            if (in(0) != in(1)) shape_error(n, "operands differ in shape");
            out = {in(0)};
        } else if (op == "linear") {
            expect_inputs(n, 2, 3);
            const Shape& w = in(1);
            if (w.size() != 2 || in(0).back() != w[1]) shape_error(n, "input width does not match the weight's dim 1");
            if (n->inputs.size() == 3 && (in(2).size() != 1 || in(2)[0] != w[0])) shape_error(n, "bias does not match the weight's dim 0");
            out = {{kTokens, w[0]}};
        } else if (op == "split") {
            expect_inputs(n, 1, 1);
            const auto& sizes = std::get<std::vector<int64_t>>(n->attrs.at("sizes"));
            int64_t total = 0;
            for (int64_t s : sizes) {
                out.push_back({kTokens, s});
                total += s;
            }
            if (total != in(0).back()) shape_error(n, "split sizes add to " + std::to_string(total));
        } else if (op == "rope") {
            expect_inputs(n, 3, 3);
            out = {in(0), in(1)};
        } else if (op == "attention") {
            expect_inputs(n, 3, 3);
            int64_t hd = n->attr_int("head_dim");
            if (in(0).back() != n->attr_int("heads") * hd || in(1).back() != n->attr_int("kv_heads") * hd || in(2) != in(1))
                shape_error(n, "q/k/v widths do not match heads x head_dim");
            out = {in(0)};
        } else if (op == "silu_mul") {
            expect_inputs(n, 1, 2);
            if (n->inputs.size() == 2) {
                if (in(0) != in(1)) shape_error(n, "gate and up differ in shape");
                out = {in(0)};
            } else {
                if (in(0).back() % 2) shape_error(n, "fused gate_up width is odd");
                out = {{kTokens, in(0).back() / 2}};
            }
        } else if (op == "moe") {
            expect_inputs(n, 4, 5);  // x, router logits, w1 + w3 (or fused w13), w2
            out = {in(0)};
        } else if (op == "all_gather") {
            expect_inputs(n, 1, 1);
            int64_t width = in(0).back() * n->attr_int("world");
            if (n->has_attr("valid")) width = std::min(width, n->attr_int("valid"));
            out = {{kTokens, width}};
        } else if (op == "add_rmsnorm" || op == "allreduce_add_rmsnorm") {
            expect_inputs(n, 3, 3);
            if (in(0) != in(1)) shape_error(n, "operands differ in shape");
            out = {in(0), in(0)};
        } else {
            shape_error(n, "no shape rule for this op");
        }
        if (out.size() != n->outputs.size()) shape_error(n, "has " + std::to_string(n->outputs.size()) + " outputs, rule gives " + std::to_string(out.size()));
        for (size_t i = 0; i < out.size(); ++i) n->outputs[i]->shape = out[i];
    }
}

namespace {

std::string attr_text(const Attr& a) {
    if (std::holds_alternative<int64_t>(a)) return std::to_string(std::get<int64_t>(a));
    if (std::holds_alternative<double>(a)) {
        std::ostringstream os;
        os << std::get<double>(a);
        return os.str();
    }
    if (std::holds_alternative<std::string>(a)) return "\"" + std::get<std::string>(a) + "\"";
    return shape_text(std::get<std::vector<int64_t>>(a));
}

nlohmann::json attr_json(const Attr& a) {
    if (std::holds_alternative<int64_t>(a)) return std::get<int64_t>(a);
    if (std::holds_alternative<double>(a)) return std::get<double>(a);
    if (std::holds_alternative<std::string>(a)) return std::get<std::string>(a);
    return nlohmann::json{{"ints", std::get<std::vector<int64_t>>(a)}};
}

Attr attr_from(const nlohmann::json& j) {
    if (j.is_number_integer()) return j.get<int64_t>();
    if (j.is_number()) return j.get<double>();
    if (j.is_string()) return j.get<std::string>();
    return j.at("ints").get<std::vector<int64_t>>();
}

}  // namespace

std::string Graph::dump() const {
    std::ostringstream os;
    for (Node* n : nodes()) {
        for (size_t i = 0; i < n->outputs.size(); ++i)
            os << (i ? ", " : "") << "%" << n->outputs[i]->name << shape_text(n->outputs[i]->shape);
        os << " = " << n->op << "(";
        for (size_t i = 0; i < n->inputs.size(); ++i) os << (i ? ", " : "") << "%" << n->inputs[i]->name;
        os << ")";
        for (auto& [k, v] : n->attrs) os << " " << k << "=" << attr_text(v);
        if (!n->hints.empty()) {
            os << "  #";
            for (auto& [k, v] : n->hints) os << " " << k << "=" << v;
        }
        os << "\n";
    }
    os << "outputs:";
    for (Value* v : outputs_) os << " %" << v->name;
    os << "\n";
    return os.str();
}

std::string Graph::to_dot() const {
    std::ostringstream os;
    os << "digraph tpx {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\", fontsize=10];\n";
    for (Node* n : nodes()) {
        std::string color = n->op == "param" ? "lightgrey" : (n->op.find("all_") != std::string::npos ? "orange" : "white");
        os << "  n" << n->id << " [label=\"" << n->name << "\\n" << n->op;
        if (!n->outputs.empty()) os << " " << shape_text(n->outputs[0]->shape);
        os << "\", style=filled, fillcolor=" << color << "];\n";
    }
    for (Node* n : nodes())
        for (Value* in : n->inputs)
            if (in->producer) os << "  n" << in->producer->id << " -> n" << n->id << ";\n";
    os << "}\n";
    return os.str();
}

nlohmann::json Graph::to_json() const {
    using json = nlohmann::json;
    json nodes = json::array();
    for (Node* n : this->nodes()) {
        json jn = {{"id", n->id}, {"op", n->op}, {"name", n->name}};
        json ins = json::array(), outs = json::array(), attrs = json::object();
        for (Value* v : n->inputs) ins.push_back(v->id);
        for (Value* v : n->outputs) outs.push_back({{"id", v->id}, {"name", v->name}, {"shape", v->shape}, {"dtype", v->dtype}});
        for (auto& [k, v] : n->attrs) attrs[k] = attr_json(v);
        jn["inputs"] = ins;
        jn["outputs"] = outs;
        jn["attrs"] = attrs;
        jn["hints"] = n->hints;
        if (n->param) {
            json segs = json::array(), ranks = json::array();
            for (const Segment& s : n->param->segments)
                segs.push_back({{"tensor", s.tensor}, {"shape", s.shape}, {"rule", split_rule_name(s.rule)}, {"granule", s.granule},
                                {"expert", s.expert}, {"index", s.index}, {"offset", s.offset}, {"tensor_shape", s.tensor_shape}});
            for (const auto& pieces : n->param->by_rank) {
                json jp = json::array();
                for (const Piece& p : pieces)
                    jp.push_back({{"tensor", p.tensor}, {"dim", p.slice.dim}, {"start", p.slice.start}, {"length", p.slice.length},
                                  {"index", p.slice.index}, {"zeros", p.zeros}, {"elements", p.elements}});
                ranks.push_back(jp);
            }
            jn["param"] = {{"segments", segs}, {"stack", n->param->stack}, {"by_rank", ranks}};
        }
        nodes.push_back(jn);
    }
    json outputs = json::array();
    for (Value* v : outputs_) outputs.push_back(v->id);
    return {{"nodes", nodes}, {"outputs", outputs}};
}

Graph Graph::from_json(const nlohmann::json& j) {
    Graph g;
    std::map<int, Value*> by_id;
    // First every node and its outputs, then the inputs: order in the file does not matter.
    std::vector<std::pair<Node*, const nlohmann::json*>> pending;
    for (const auto& jn : j.at("nodes")) {
        g.nodes_.push_back(std::make_unique<Node>());
        Node* n = g.nodes_.back().get();
        n->id = jn.at("id").get<int>();
        n->op = jn.at("op").get<std::string>();
        n->kind = parse_op(n->op);
        n->name = jn.at("name").get<std::string>();
        for (auto it = jn.at("attrs").begin(); it != jn.at("attrs").end(); ++it) n->attrs[it.key()] = attr_from(*it);
        n->hints = jn.at("hints").get<std::map<std::string, std::string>>();
        for (const auto& jo : jn.at("outputs")) {
            Value* v = g.new_value(jo.at("name").get<std::string>(), jo.at("shape").get<Shape>(), n);
            v->id = jo.at("id").get<int>();
            v->dtype = jo.at("dtype").get<std::string>();
            by_id[v->id] = v;
            n->outputs.push_back(v);
        }
        if (jn.contains("param")) {
            auto spec = std::make_shared<ParamSpec>();
            const auto& jp = jn.at("param");
            for (const auto& js : jp.at("segments"))
                spec->segments.push_back(Segment{js.at("tensor").get<std::string>(), js.at("shape").get<Shape>(),
                                                 split_rule_from(js.at("rule").get<std::string>()), js.at("granule").get<int64_t>(),
                                                 js.at("expert").get<int64_t>(), js.at("index").get<int64_t>(),
                                                 js.at("offset").get<int64_t>(), js.at("tensor_shape").get<Shape>()});
            spec->stack = jp.at("stack").get<Shape>();
            for (const auto& jr : jp.at("by_rank")) {
                std::vector<Piece> pieces;
                for (const auto& p : jr)
                    pieces.push_back(Piece{p.at("tensor").get<std::string>(),
                                           Slice{p.at("dim").get<int>(), p.at("start").get<int64_t>(), p.at("length").get<int64_t>(),
                                                 p.at("index").get<int64_t>()},
                                           p.at("zeros").get<int64_t>(), p.at("elements").get<int64_t>()});
                spec->by_rank.push_back(std::move(pieces));
            }
            n->param = spec;
        }
        pending.emplace_back(n, &jn);
        g.next_id_ = std::max(g.next_id_, n->id + 1);
    }
    for (auto& [n, jn] : pending)
        for (const auto& id : jn->at("inputs")) {
            auto it = by_id.find(id.get<int>());
            if (it == by_id.end()) throw Error("plan graph: node " + n->name + " reads value " + std::to_string(id.get<int>()) + ", which no node makes");
            n->inputs.push_back(it->second);
            if (std::find(it->second->users.begin(), it->second->users.end(), n) == it->second->users.end()) it->second->users.push_back(n);
        }
    for (const auto& id : j.at("outputs")) g.outputs_.push_back(by_id.at(id.get<int>()));
    for (auto& v : g.values_) g.next_id_ = std::max(g.next_id_, v->id + 1);
    return g;
}

}  // namespace tpx
