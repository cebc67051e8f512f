// The restricted unpickler. Values live on a stack of shared nodes (the memo may hold the
// dict SETITEMS fills later); every length and index from the stream is checked against what
// is left of it, so a corrupt pickle is a message, never a crash. Nothing named by a GLOBAL
// is resolved or called: REDUCE applies only the two callables below, by hand.
#include "loader/torch_pickle.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>

#include "loader/safetensors.h"

namespace tpx {
namespace {

struct Value;
using ValuePtr = std::shared_ptr<Value>;

struct Value {
    enum Kind { kNone, kBool, kInt, kFloat, kStr, kTuple, kList, kDict, kGlobal, kStorage, kTensor, kMark } kind = kNone;
    int64_t i = 0;
    double f = 0;
    std::string s;                // str; global "module.name"; storage key
    std::vector<ValuePtr> items;  // tuple, list; dict as key, value, key, value ...
    DType dtype = DType::kF32;    // storage
    PickledTensor tensor;
    Value() = default;
    Value(const Value&) = delete;
    Value& operator=(const Value&) = delete;
    // Without recursion: a pickle may nest values a million levels deep in a few MB (and the
    // memo can nest them past any bound checked as they are built), which a recursive release
    // of the shared nodes would overflow the stack on.
    ~Value() {
        std::vector<ValuePtr> work = std::move(items);
        while (!work.empty()) {
            ValuePtr v = std::move(work.back());
            work.pop_back();
            if (v.use_count() == 1)  // the last owner: its children are released here, not in its destructor
                for (ValuePtr& c : v->items) work.push_back(std::move(c));
        }
    }
};

const std::map<std::string, DType>& storage_types() {
    static const std::map<std::string, DType> m = {
        {"torch.FloatStorage", DType::kF32}, {"torch.HalfStorage", DType::kF16},  {"torch.BFloat16Storage", DType::kBF16},
        {"torch.DoubleStorage", DType::kF64}, {"torch.LongStorage", DType::kI64}, {"torch.IntStorage", DType::kI32},
        {"torch.ShortStorage", DType::kI16}, {"torch.CharStorage", DType::kI8},   {"torch.ByteStorage", DType::kU8},
        {"torch.BoolStorage", DType::kBool}};
    return m;
}

constexpr const char* kOrderedDict = "collections.OrderedDict";
constexpr const char* kRebuildTensor = "torch._utils._rebuild_tensor_v2";

class Unpickler {
public:
    Unpickler(const std::string& file, const std::string& bytes) : file_(file), b_(bytes) {}
    ValuePtr run();

private:
    [[noreturn]] void fail(const std::string& why) const {
        throw CheckpointError(file_ + ": data.pkl at byte " + std::to_string(op_at_) + ": " + why);
    }
    const char* take(size_t n) {
        if (n > b_.size() - pos_) fail("the pickle ends early (" + std::to_string(n) + " bytes needed, " + std::to_string(b_.size() - pos_) + " left)");
        const char* p = b_.data() + pos_;
        pos_ += n;
        return p;
    }
    uint64_t uint_le(size_t n) {
        const unsigned char* p = reinterpret_cast<const unsigned char*>(take(n));
        uint64_t v = 0;
        for (size_t k = n; k-- > 0;) v = (v << 8) | p[k];
        return v;
    }
    ValuePtr make(Value::Kind k) {
        auto v = std::make_shared<Value>();
        v->kind = k;
        return v;
    }
    ValuePtr make_int(int64_t i) {
        ValuePtr v = make(Value::kInt);
        v->i = i;
        return v;
    }
    ValuePtr pop() {
        if (stack_.empty()) fail("pops an empty stack");
        ValuePtr v = stack_.back();
        stack_.pop_back();
        if (v->kind == Value::kMark) fail("pops a MARK");
        return v;
    }
    ValuePtr& top() {
        if (stack_.empty() || stack_.back()->kind == Value::kMark) fail("needs a value on the stack");
        return stack_.back();
    }
    // The values above the topmost MARK, which is removed.
    std::vector<ValuePtr> pop_mark() {
        size_t m = stack_.size();
        while (m > 0 && stack_[m - 1]->kind != Value::kMark) --m;
        if (m == 0) fail("has no MARK to pop to");
        std::vector<ValuePtr> items(stack_.begin() + m, stack_.end());
        stack_.resize(m - 1);
        return items;
    }
    void push_tuple(std::vector<ValuePtr> items) {
        ValuePtr t = make(Value::kTuple);
        t->items = std::move(items);
        stack_.push_back(t);
    }
    void memo_put(uint64_t key) { memo_[key] = top(); }
    void memo_get(uint64_t key) {
        auto it = memo_.find(key);
        if (it == memo_.end()) fail("gets memo entry " + std::to_string(key) + ", which was never put");
        stack_.push_back(it->second);
    }
    void global();
    void reduce();
    void persistent_id();
    void set_items(ValuePtr& dict, const std::vector<ValuePtr>& kv);
    int64_t as_int(const ValuePtr& v, const char* what) const {
        if (v->kind != Value::kInt) fail(std::string(what) + " is not an integer");
        return v->i;
    }
    std::vector<int64_t> int_tuple(const ValuePtr& v, const char* what) const {
        if (v->kind != Value::kTuple) fail(std::string(what) + " is not a tuple");
        std::vector<int64_t> out;
        for (const ValuePtr& x : v->items) {
            int64_t n = as_int(x, what);
            if (n < 0) fail(std::string(what) + " holds " + std::to_string(n));
            out.push_back(n);
        }
        return out;
    }

    const std::string& file_;
    const std::string& b_;
    size_t pos_ = 0, op_at_ = 0;
    std::vector<ValuePtr> stack_;
    std::map<uint64_t, ValuePtr> memo_;
};

void Unpickler::global() {
    // "module\nname\n"; only the names on the allow list become values, and only as names.
    auto line = [&] {
        size_t end = b_.find('\n', pos_);
        if (end == std::string::npos || end - pos_ > 256) fail("GLOBAL without a newline-terminated name");
        std::string s = b_.substr(pos_, end - pos_);
        pos_ = end + 1;
        return s;
    };
    std::string module = line();
    std::string name = module + "." + line();
    const auto& allowed = allowed_pickle_globals();
    if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
        std::string list;
        for (const std::string& a : allowed) list += (list.empty() ? "" : ", ") + a;
        fail("names the global '" + name + "', which a torch.save of tensors never writes; refused without running anything "
             "(allowed: " + list + ")");
    }
    ValuePtr g = make(Value::kGlobal);
    g->s = name;
    stack_.push_back(g);
}

// ('storage', <storage class>, key, location, numel), as torch.save's persistent_id writes it.
void Unpickler::persistent_id() {
    ValuePtr pid = pop();
    if (pid->kind != Value::kTuple || pid->items.size() != 5 || pid->items[0]->kind != Value::kStr || pid->items[0]->s != "storage")
        fail("a persistent id that is not ('storage', type, key, location, numel)");
    const ValuePtr& type = pid->items[1];
    auto it = type->kind == Value::kGlobal ? storage_types().find(type->s) : storage_types().end();
    if (it == storage_types().end()) fail("a persistent id whose storage type is not a torch storage class");
    if (pid->items[2]->kind != Value::kStr) fail("a persistent id whose key is not a string");
    ValuePtr st = make(Value::kStorage);
    st->dtype = it->second;
    st->s = pid->items[2]->s;
    st->i = as_int(pid->items[4], "a storage's element count");
    if (st->i < 0) fail("a storage of " + std::to_string(st->i) + " elements");
    stack_.push_back(st);
}

void Unpickler::reduce() {
    ValuePtr args = pop(), callable = pop();
    if (callable->kind != Value::kGlobal || args->kind != Value::kTuple) fail("REDUCE of something that is not an allowed global");
    if (callable->s == kOrderedDict) {
        if (!args->items.empty()) fail("collections.OrderedDict called with arguments");
        stack_.push_back(make(Value::kDict));
        return;
    }
    if (callable->s != kRebuildTensor) fail("REDUCE calls '" + callable->s + "', which is not a callable here");
    // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
    const auto& a = args->items;
    if (a.size() < 6 || a.size() > 7 || a[0]->kind != Value::kStorage)
        fail(std::string(kRebuildTensor) + " with arguments other than (storage, offset, size, stride, requires_grad, hooks)");
    ValuePtr t = make(Value::kTensor);
    PickledTensor& p = t->tensor;
    p.dtype = a[0]->dtype;
    p.storage_key = a[0]->s;
    p.storage_numel = a[0]->i;
    p.storage_offset = as_int(a[1], "a tensor's storage offset");
    if (p.storage_offset < 0) fail("a tensor at storage offset " + std::to_string(p.storage_offset));
    p.shape = int_tuple(a[2], "a tensor's size");
    p.stride = int_tuple(a[3], "a tensor's stride");
    if (p.shape.size() != p.stride.size()) fail("a tensor whose size and stride differ in length");
    if (a[5]->kind != Value::kDict || !a[5]->items.empty()) fail("a tensor with backward hooks");
    stack_.push_back(t);
}

void Unpickler::set_items(ValuePtr& dict, const std::vector<ValuePtr>& kv) {
    if (dict->kind != Value::kDict) fail("SETITEM(S) on something that is not a dict");
    if (kv.size() % 2) fail("SETITEMS with an odd number of values");
    dict->items.insert(dict->items.end(), kv.begin(), kv.end());
}

ValuePtr Unpickler::run() {
    while (true) {
        op_at_ = pos_;
        const unsigned char op = (unsigned char)*take(1);
        switch (op) {
            case 0x80: {  // PROTO
                unsigned v = (unsigned char)*take(1);
                if (v != 2) fail("pickle protocol " + std::to_string(v) + "; torch.save writes protocol 2");
                break;
            }
            case '}': stack_.push_back(make(Value::kDict)); break;
            case ']': stack_.push_back(make(Value::kList)); break;
            case ')': push_tuple({}); break;
            case '(': stack_.push_back(make(Value::kMark)); break;
            case 't': push_tuple(pop_mark()); break;
            case 0x85: { ValuePtr a = pop(); push_tuple({a}); break; }
            case 0x86: { ValuePtr b = pop(), a = pop(); push_tuple({a, b}); break; }
            case 0x87: { ValuePtr c = pop(), b = pop(), a = pop(); push_tuple({a, b, c}); break; }
            case 'q': memo_put(uint_le(1)); break;
            case 'r': memo_put(uint_le(4)); break;
            case 'h': memo_get(uint_le(1)); break;
            case 'j': memo_get(uint_le(4)); break;
            case 'X': {  // BINUNICODE
                uint64_t n = uint_le(4);
                ValuePtr s = make(Value::kStr);
                s->s.assign(take(n), n);
                stack_.push_back(s);
                break;
            }
            case 'K': stack_.push_back(make_int((int64_t)uint_le(1))); break;
            case 'M': stack_.push_back(make_int((int64_t)uint_le(2))); break;
            case 'J': stack_.push_back(make_int((int64_t)(int32_t)(uint32_t)uint_le(4))); break;
            case 0x8a: {  // LONG1: n bytes, little-endian two's complement
                size_t n = (unsigned char)*take(1);
                if (n > 8) fail("an integer of " + std::to_string(n) + " bytes");
                uint64_t v = n ? uint_le(n) : 0;
                if (n > 0 && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~0ull << (8 * n);  // sign-extend
                stack_.push_back(make_int((int64_t)v));
                break;
            }
            case 'G': {  // BINFLOAT, big-endian
                const unsigned char* p = reinterpret_cast<const unsigned char*>(take(8));
                uint64_t bits = 0;
                for (int k = 0; k < 8; ++k) bits = (bits << 8) | p[k];
                ValuePtr v = make(Value::kFloat);
                std::memcpy(&v->f, &bits, 8);
                stack_.push_back(v);
                break;
            }
            case 0x88: case 0x89: {
                ValuePtr v = make(Value::kBool);
                v->i = op == 0x88;
                stack_.push_back(v);
                break;
            }
            case 'N': stack_.push_back(make(Value::kNone)); break;
            case 'c': global(); break;
            case 'Q': persistent_id(); break;
            case 'R': reduce(); break;
            case 's': { ValuePtr v = pop(), k = pop(); set_items(top(), {k, v}); break; }
            case 'u': { std::vector<ValuePtr> kv = pop_mark(); set_items(top(), kv); break; }
            case 'a': {
                ValuePtr v = pop();
                if (top()->kind != Value::kList) fail("APPEND to something that is not a list");
                top()->items.push_back(v);
                break;
            }
            case 'e': {
                std::vector<ValuePtr> vs = pop_mark();
                if (top()->kind != Value::kList) fail("APPENDS to something that is not a list");
                top()->items.insert(top()->items.end(), vs.begin(), vs.end());
                break;
            }
            case '.': {
                ValuePtr result = pop();
                if (!stack_.empty()) fail("STOP with " + std::to_string(stack_.size()) + " values left on the stack");
                return result;
            }
            default: {
                char hex[8];
                std::snprintf(hex, sizeof(hex), "0x%02x", op);
                fail(std::string("opcode ") + hex + " ('" + (op >= 32 && op < 127 ? std::string(1, (char)op) : "?") +
                     "'), which torch.save does not write for a dict of tensors");
            }
        }
    }
}

}  // namespace

const std::vector<std::string>& allowed_pickle_globals() {
    static const std::vector<std::string> g = [] {
        std::vector<std::string> v = {kOrderedDict, kRebuildTensor};
        for (const auto& [name, dtype] : storage_types()) v.push_back(name);
        return v;
    }();
    return g;
}

std::vector<PickledTensor> parse_torch_pickle(const std::string& file, const std::string& bytes) {
    ValuePtr top = Unpickler(file, bytes).run();
    if (top->kind != Value::kDict) throw CheckpointError(file + ": data.pkl holds something other than a dict of tensors");
    std::vector<PickledTensor> out;
    for (size_t k = 0; k + 1 < top->items.size(); k += 2) {
        const ValuePtr& key = top->items[k];
        const ValuePtr& value = top->items[k + 1];
        if (key->kind != Value::kStr) throw CheckpointError(file + ": data.pkl has a dict key that is not a string");
        if (value->kind != Value::kTensor)
            throw CheckpointError(file + ": data.pkl entry '" + key->s + "' is not a tensor (a dict of tensors is expected)");
        for (const PickledTensor& seen : out)
            if (seen.name == key->s) throw CheckpointError(file + ": data.pkl holds tensor '" + key->s + "' twice");
        out.push_back(value->tensor);
        out.back().name = key->s;
    }
    return out;
}

}  // namespace tpx
