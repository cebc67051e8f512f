// The API key's check ([serve] api_key), one rule for the request gate (whether to wait for a
// body) and the server's handlers (whether to answer 401).
#pragma once

#include <string>

namespace tpx {

// Whether an Authorization value carries `key` as RFC 9110 11.4 reads it: the scheme "Bearer" in
// any case, one or more spaces, then the key byte for byte (the value trimmed of its outer spaces
// and tabs, as cpp-httplib hands it on and the gate reads it), in a time that does not depend on
// where a wrong key first differs.
bool bearer_matches(const std::string& authorization, const std::string& key);

}  // namespace tpx
