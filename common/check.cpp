// The one place where a failed check becomes an exception with its full context.
#include "common/check.h"

#include "common/log.h"

namespace tpx {

void fail_check(const char* library, const char* statement, const char* file, int line,
                const std::string& detail) {
    throw CheckError(where() + ": " + library + " call `" + statement + "` failed at " + file +
                     ":" + std::to_string(line) + ": " + detail);
}

}  // namespace tpx
