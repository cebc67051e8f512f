// The job file's tables as parse.cpp reads them: a Section remembers the keys it was asked for
// (the valid ones) and reports anything else in its table as unknown, with that list.
#pragma once

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <toml++/toml.h>

#include "common/error.h"

namespace tpx::job_section {

inline const char* type_name(toml::node_type t) {
    switch (t) {
        case toml::node_type::table: return "a table";
        case toml::node_type::array: return "an array";
        case toml::node_type::string: return "a string";
        case toml::node_type::integer: return "an integer";
        case toml::node_type::floating_point: return "a float";
        case toml::node_type::boolean: return "a boolean";
        case toml::node_type::date: return "a date";
        case toml::node_type::time: return "a time";
        case toml::node_type::date_time: return "a date-time";
        default: return "nothing";
    }
}

inline std::string join(const std::vector<std::string>& items, const char* sep = ", ") {
    std::string s;
    for (size_t i = 0; i < items.size(); ++i) s += (i ? sep : "") + items[i];
    return s;
}

// A table of the job file and the keys the schema reads from it.
class Section {
public:
    Section(const std::string& file, std::string name, const toml::table* table, long line, long col)
        : file_(file), name_(std::move(name)), table_(table), line_(line), col_(col) {}

    const std::string& file() const { return file_; }
    bool present() const { return table_ != nullptr; }
    long line() const { return line_; }
    long col() const { return col_; }

    // The node for `key`, or nullptr; registers `key` as valid either way.
    const toml::node* node(const std::string& key) {
        valid_.push_back(key);
        if (!table_) return nullptr;
        return table_->get(key);
    }

    [[noreturn]] void fail(const toml::node& n, const std::string& key, const std::string& what) const {
        throw JobError(at(file_, n.source().begin.line, n.source().begin.column, qualified(key) + " " + what));
    }
    [[noreturn]] void fail_here(const std::string& what) const { throw JobError(at(file_, line_, col_, what)); }

    std::string qualified(const std::string& key) const { return name_.empty() ? key : name_ + "." + key; }

    bool get_bool(const std::string& key, bool& out) {
        const toml::node* n = node(key);
        if (!n) return false;
        if (!n->is_boolean()) fail(*n, key, std::string("must be true or false, not ") + type_name(n->type()));
        out = n->as_boolean()->get();
        return true;
    }

    bool get_int(const std::string& key, int64_t& out, int64_t lo, int64_t hi) {
        const toml::node* n = node(key);
        if (!n) return false;
        if (!n->is_integer()) fail(*n, key, std::string("must be an integer, not ") + type_name(n->type()));
        int64_t v = n->as_integer()->get();
        if (v < lo || v > hi) {
            std::ostringstream os;
            os << "= " << v << " is out of range: must be ";
            if (hi == INT64_MAX) os << "at least " << lo;
            else os << "between " << lo << " and " << hi;
            fail(*n, key, os.str());
        }
        out = v;
        return true;
    }

    bool get_int(const std::string& key, int& out, int lo, int hi) {
        int64_t v = out;
        bool got = get_int(key, v, (int64_t)lo, (int64_t)hi);
        out = (int)v;
        return got;
    }

    bool get_double(const std::string& key, double& out, double lo, double hi, bool lo_open = false) {
        const toml::node* n = node(key);
        if (!n) return false;
        double v;
        if (n->is_floating_point()) v = n->as_floating_point()->get();
        else if (n->is_integer()) v = (double)n->as_integer()->get();
        else fail(*n, key, std::string("must be a number, not ") + type_name(n->type()));
        if (!(lo_open ? v > lo : v >= lo) || !(v <= hi)) {
            std::ostringstream os;  // (the value as written, not rounded to 6 digits: 2.0000001 is not 2)
            char written[32];
            os << "= " << std::string(written, std::to_chars(written, written + sizeof(written), v).ptr) << " is out of range: must be "
               << (lo_open ? "> " : ">= ") << lo;
            if (hi < 1e300) os << " and <= " << hi;
            fail(*n, key, os.str());
        }
        out = v;
        return true;
    }

    bool get_string(const std::string& key, std::string& out, const std::vector<std::string>& allowed = {}) {
        const toml::node* n = node(key);
        if (!n) return false;
        if (!n->is_string()) fail(*n, key, std::string("must be a string, not ") + type_name(n->type()));
        std::string v = n->as_string()->get();
        refuse_nul(*n, key, v);
        if (!allowed.empty() && std::find(allowed.begin(), allowed.end(), v) == allowed.end())
            fail(*n, key, "= \"" + v + "\" is not one of: " + join(allowed));
        out = v;
        return true;
    }

    // allow_nul: the strings are text to match (run.stop), not names.
    bool get_string_list(const std::string& key, std::vector<std::string>& out, bool allow_nul = false) {
        const toml::node* n = node(key);
        if (!n) return false;
        if (!n->is_array()) fail(*n, key, std::string("must be an array of strings, not ") + type_name(n->type()));
        out.clear();
        for (const toml::node& item : *n->as_array()) {
            if (!item.is_string())
                fail(item, key, std::string("must be an array of strings; this element is ") + type_name(item.type()));
            out.push_back(item.as_string()->get());
            if (!allow_nul) refuse_nul(item, key, out.back());
        }
        return true;
    }

    // An array of distinct integers in [lo, hi] (`what` names one in messages).
    bool get_int_list(const std::string& key, std::vector<int64_t>& out, int64_t lo, int64_t hi, const std::string& what) {
        const toml::node* n = node(key);
        if (!n) return false;
        if (!n->is_array()) fail(*n, key, "must be an array of " + what + ", not " + type_name(n->type()));
        out.clear();
        std::set<int64_t> seen;
        for (const toml::node& item : *n->as_array()) {
            const bool in = item.is_integer() && item.as_integer()->get() >= lo && item.as_integer()->get() <= hi;
            if (!in) fail(item, key, "must hold " + what + " from " + std::to_string(lo) + " to " + std::to_string(hi) + "; this element is " +
                                         (item.is_integer() ? std::to_string(item.as_integer()->get()) : std::string(type_name(item.type()))));
            if (!seen.insert(item.as_integer()->get()).second) fail(item, key, "holds " + std::to_string(item.as_integer()->get()) + " twice");
            out.push_back(item.as_integer()->get());
        }
        return true;
    }

    // A NUL (\u0000) ends a path where the system reads it, so two different strings could name
    // one file (and a message would be cut there): refused in every string but run.stop's.
    void refuse_nul(const toml::node& n, const std::string& key, const std::string& v) const {
        if (v.find('\0') != std::string::npos) fail(n, key, "holds a NUL character (\\u0000), which no job string but run.stop may hold");
    }

    // Every key in the table that the schema did not read is an error naming the valid keys.
    void reject_unknown() const {
        if (!table_) return;
        for (auto&& [k, v] : *table_) {
            std::string key(k.str());
            if (std::find(valid_.begin(), valid_.end(), key) != valid_.end()) continue;
            throw JobError(at(file_, k.source().begin.line, k.source().begin.column,
                              "unknown key '" + key + "' in [" + name_ + "]; valid keys: " + join(valid_)));
        }
    }

private:
    std::string file_;
    std::string name_;
    const toml::table* table_;
    long line_, col_;
    std::vector<std::string> valid_;
};

// [name] as a Section (parse_job has checked that it is a table).
inline Section section(const toml::table& root, const std::string& file, const std::string& name) {
    const toml::node* n = root.get(name);
    if (!n) return Section(file, name, nullptr, 0, 0);
    return Section(file, name, n->as_table(), n->source().begin.line, n->source().begin.column);
}

}  // namespace tpx::job_section
