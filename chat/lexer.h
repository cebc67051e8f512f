// Splits a Jinja template into text and tag tokens, applying whitespace control as HF's
// apply_chat_template configures Jinja2: trim_blocks, lstrip_blocks, "-" and "+" markers, and
// one trailing newline of the source dropped. Every token carries its 1-based source line.
#pragma once

#include <string>
#include <vector>

namespace tpx::chat {

struct Token {
    enum class Type { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, End };
    Type type;
    std::string text;  // Text: the literal output; Name/String/Op/Int/Float: the token itself
    int line = 0;
};

// Throws tpx::JobError "NAME:LINE: ..." for an unterminated tag, string or comment.
std::vector<Token> tokenize(const std::string& source, const std::string& name);

}  // namespace tpx::chat
