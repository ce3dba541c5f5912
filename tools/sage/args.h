// A small command-line parser for the `sage` subcommands.
//
// Flags are declared up front (so that --help can list them and unknown
// flags are errors, never silently ignored). Accepted spellings:
//   --name value   --name=value   -n value   (for options that take a value)
//   --name                                   (for switches)
// Parse and conversion errors throw UsageError; main() prints the message
// and the command's usage and exits with status 2.
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace sage_cli {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The entry of `choices` that `value` names, '-' and '_' being the same
// character (the help spells enum values with '-', the C++ names and the
// recording format with '_'). UsageError naming `flag` and listing the
// choices otherwise.
std::string match_choice(const std::string& flag, const std::string& value, const std::vector<std::string>& choices);

// The choices as the help and the errors spell them: "a|b|c".
std::string choice_list(const std::vector<std::string>& choices);

// UsageError naming `flag` unless a file can be written at `path`: checked
// before the work, so that a typo in an output path does not cost a run.
void check_output_file(const std::string& flag, const std::string& path);
// Creates the directory `path` (and its parents) for `flag`'s output up front,
// or throws UsageError saying why it cannot be written, before any work.
void make_output_directory(const std::string& flag, const std::string& path);

class ArgParser {
 public:
  ArgParser(std::string command, std::string summary);

  // A switch without a value ("--causal").
  void add_switch(const std::string& name, const std::string& help);
  // An option with a value ("--seed S"). short_name may be "" or "-n".
  void add_option(const std::string& name, const std::string& short_name, const std::string& value_name,
                  const std::string& help);
  // Extra text printed after the flag list.
  void set_epilog(std::string text) { epilog_ = std::move(text); }

  // Parses args (the words after the command name). Returns false when
  // --help / -h was given (the caller prints usage() and exits 0).
  bool parse(const std::vector<std::string>& args);

  bool has(const std::string& name) const { return values_.count(name) != 0; }
  std::string get(const std::string& name, const std::string& fallback) const;
  // A whole number in [min, max]; throws UsageError naming the flag.
  std::int64_t get_int(const std::string& name, std::int64_t fallback, std::int64_t min, std::int64_t max) const;
  // The value as spelled in `choices` (match_choice).
  std::string get_choice(const std::string& name, const std::string& fallback,
                         const std::vector<std::string>& choices) const;

  std::string usage() const;
  const std::string& command() const { return command_; }

 private:
  struct Flag {
    std::string name, short_name, value_name, help;
    bool takes_value() const { return !value_name.empty(); }
  };
  const Flag* find(const std::string& spelling) const;

  std::string command_, summary_, epilog_;
  std::vector<Flag> flags_;
  std::map<std::string, std::string> values_;
};

}  // namespace sage_cli
