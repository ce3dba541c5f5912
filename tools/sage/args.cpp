#include "args.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <sstream>

namespace sage_cli {

ArgParser::ArgParser(std::string command, std::string summary)
    : command_(std::move(command)), summary_(std::move(summary)) {}

void ArgParser::add_switch(const std::string& name, const std::string& help) { flags_.push_back({name, "", "", help}); }

void ArgParser::add_option(const std::string& name, const std::string& short_name, const std::string& value_name,
                           const std::string& help) {
  flags_.push_back({name, short_name, value_name, help});
}

const ArgParser::Flag* ArgParser::find(const std::string& spelling) const {
  for (const Flag& flag : flags_) {
    if (spelling == flag.name || (!flag.short_name.empty() && spelling == flag.short_name)) return &flag;
  }
  return nullptr;
}

bool ArgParser::parse(const std::vector<std::string>& args) {
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& word = args[i];
    if (word == "--help" || word == "-h") return false;
    if (word.empty() || word[0] != '-') throw UsageError("unexpected argument '" + word + "'");

    // "--name=value" carries its value inline.
    const std::size_t eq = word.find('=');
    const std::string spelling = word.substr(0, eq);
    const Flag* flag = find(spelling);
    if (flag == nullptr) throw UsageError("unknown flag '" + spelling + "'");

    if (!flag->takes_value()) {
      if (eq != std::string::npos) throw UsageError(flag->name + " takes no value");
      values_.insert_or_assign(flag->name, std::string("1"));
    } else if (eq != std::string::npos) {
      values_[flag->name] = word.substr(eq + 1);
    } else if (i + 1 < args.size()) {
      values_[flag->name] = args[++i];
    } else {
      throw UsageError(flag->name + " needs a value (" + flag->value_name + ")");
    }
  }
  return true;
}

std::string ArgParser::get(const std::string& name, const std::string& fallback) const {
  const auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

std::int64_t ArgParser::get_int(const std::string& name, std::int64_t fallback, std::int64_t min,
                                std::int64_t max) const {
  const auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  const std::string& text = it->second;
  std::int64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  // A whole number past int64's range is out of range like any other, not "not a whole number".
  const bool out_of_int64 = error == std::errc::result_out_of_range;
  if ((error != std::errc() && !out_of_int64) || end != text.data() + text.size()) {
    throw UsageError(name + ": '" + text + "' is not a whole number");
  }
  if (out_of_int64 || value < min || value > max) {
    throw UsageError(name + ": " + text + " is out of range (" + std::to_string(min) + ".." + std::to_string(max) +
                     ")");
  }
  return value;
}

std::string match_choice(const std::string& flag, const std::string& value, const std::vector<std::string>& choices) {
  const auto dashed = [](std::string text) {
    std::replace(text.begin(), text.end(), '_', '-');
    return text;
  };
  for (const std::string& choice : choices) {
    if (dashed(value) == dashed(choice)) return choice;
  }
  throw UsageError(flag + ": '" + value + "' is not one of " + choice_list(choices));
}

std::string choice_list(const std::vector<std::string>& choices) {
  std::string list;
  for (const std::string& choice : choices) list += (list.empty() ? "" : "|") + choice;
  return list;
}

void check_output_file(const std::string& flag, const std::string& path) {
  namespace fs = std::filesystem;
  if (path.empty()) throw UsageError(flag + ": expected a file name, got ''");
  const fs::path file(path);
  const fs::path directory = file.has_parent_path() ? file.parent_path() : fs::path(".");
  std::error_code error;
  if (!fs::is_directory(directory, error)) {
    throw UsageError(flag + ": cannot write '" + path + "': directory '" + directory.string() + "' does not exist");
  }
  if (fs::is_directory(file, error)) throw UsageError(flag + ": cannot write '" + path + "': it is a directory");
  // An existing file is overwritten; a new one needs a writable directory.
  const fs::path& target = fs::exists(file, error) ? file : directory;
  if (::access(target.c_str(), W_OK) != 0) {
    throw UsageError(flag + ": cannot write '" + path + "': " + std::strerror(errno));
  }
}

void make_output_directory(const std::string& flag, const std::string& path) {
  namespace fs = std::filesystem;
  if (path.empty()) throw UsageError(flag + ": expected a directory name, got ''");
  const fs::path directory(path);
  std::error_code error;
  fs::create_directories(directory, error);
  if (error) throw UsageError(flag + ": cannot create directory '" + path + "': " + error.message());
  if (!fs::is_directory(directory, error)) {
    throw UsageError(flag + ": cannot write into '" + path + "': it is not a directory");
  }
  if (::access(directory.c_str(), W_OK | X_OK) != 0) {
    throw UsageError(flag + ": cannot write into '" + path + "': " + std::strerror(errno));
  }
}

std::string ArgParser::get_choice(const std::string& name, const std::string& fallback,
                                  const std::vector<std::string>& choices) const {
  return match_choice(name, get(name, fallback), choices);
}

std::string ArgParser::usage() const {
  std::ostringstream os;
  os << "usage: sage " << command_ << (flags_.empty() ? "" : " [flags]") << "\n\n" << summary_ << "\n";
  if (!flags_.empty()) os << "\nflags:\n";
  for (const Flag& flag : flags_) {
    std::string spelling = flag.short_name.empty() ? flag.name : flag.short_name + ", " + flag.name;
    if (flag.takes_value()) spelling += " " + flag.value_name;
    os << "  " << spelling;
    // Help text in a second column when it fits, else on the next line.
    constexpr std::size_t kColumn = 26;
    if (spelling.size() + 2 < kColumn) {
      os << std::string(kColumn - spelling.size() - 2, ' ');
    } else {
      os << "\n" << std::string(kColumn, ' ');
    }
    // Continuation lines of a multi-line help text line up with the first.
    for (char c : flag.help) {
      os << c;
      if (c == '\n') os << std::string(kColumn, ' ');
    }
    os << "\n";
  }
  os << "  -h, --help" << std::string(26 - 12, ' ') << "show this help\n";
  if (!epilog_.empty()) os << "\n" << epilog_ << "\n";
  return os.str();
}

}  // namespace sage_cli
