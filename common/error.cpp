// Formatting of positions in user-facing errors.
#include "common/error.h"

namespace tpx {

std::string at(const std::string& file, long line, long col, const std::string& message) {
    std::string s = file;
    if (line > 0) {
        s += ":" + std::to_string(line);
        if (col > 0) s += ":" + std::to_string(col);
    }
    return s + ": " + message;
}

}  // namespace tpx
