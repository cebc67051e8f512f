// Loading a job's tokenizer and chat template.
#include "text/text_tools.h"

#include <filesystem>

#include "common/error.h"

namespace fs = std::filesystem;

namespace tpx {

std::string TextTools::render_chat(const nlohmann::ordered_json& messages, bool add_generation_prompt) const {
    if (!chat) throw JobError("no chat template: the tokenizer has none and run.chat_template is not set");
    chat::RenderOptions options;
    options.add_generation_prompt = add_generation_prompt;
    // HF passes the special tokens the tokenizer has; one it lacks stays undefined.
    auto token = [](const std::string& s) { return s.empty() ? std::nullopt : std::optional<std::string>(s); };
    options.bos_token = token(tokenizer->bos_token());
    options.eos_token = token(tokenizer->eos_token());
    options.pad_token = token(tokenizer->pad_token());
    options.unk_token = token(tokenizer->unk_token());
    return chat->render(messages, options);
}

std::vector<int32_t> TextTools::encode_chat(const nlohmann::ordered_json& messages, bool add_generation_prompt, bool add_special_tokens) const {
    return tokenizer->encode(render_chat(messages, add_generation_prompt), add_special_tokens);
}

std::string tokenizer_path(const Job& job) {
    if (!job.model.tokenizer.empty()) return job.model.tokenizer;
    std::error_code ec;
    if (fs::is_directory(job.model.path, ec) && fs::is_regular_file(fs::path(job.model.path) / "tokenizer.json", ec)) return job.model.path;
    return "";
}

TextTools load_text_tools(const Job& job) {
    TextTools tools;
    tools.tokenizer_path = tokenizer_path(job);
    if (tools.tokenizer_path.empty()) {
        if (!job.run.chat_template.empty())
            throw JobError(job.file + ": run.chat_template is set but the job has no tokenizer (set model.tokenizer)");
        if (!job.run.stop.empty()) throw JobError(job.file + ": run.stop needs a tokenizer to read the output as text (set model.tokenizer)");
        return tools;
    }
    return load_text_tools(tools.tokenizer_path, job.run.chat_template);
}

TextTools load_text_tools(const std::string& tokenizer_path, const std::string& chat_template_path) {
    TextTools tools;
    tools.tokenizer_path = tokenizer_path;
    tools.tokenizer = Tokenizer::load(tokenizer_path);
    if (!chat_template_path.empty()) {
        tools.chat = chat::load_template_file(chat_template_path);
    } else {
        std::error_code ec;
        fs::path dir = fs::is_directory(tokenizer_path, ec) ? fs::path(tokenizer_path) : fs::path(tokenizer_path).parent_path();
        if (chat::checkpoint_has_template(dir.string(), tools.tokenizer->chat_template())) tools.chat = chat::load_checkpoint_template(dir.string());
    }
    return tools;
}

}  // namespace tpx
