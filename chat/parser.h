// Parses template tokens into statements (if/for/set/macro/...) and expressions with Jinja2's
// operator precedence. Anything outside the supported subset is refused here, at load time,
// with a tpx::JobError naming the template, the line and the construct.
#pragma once

#include <string>
#include <vector>

#include "chat/ast.h"
#include "chat/lexer.h"

namespace tpx::chat {

Body parse_template(const std::vector<Token>& tokens, const std::string& name);

}  // namespace tpx::chat
