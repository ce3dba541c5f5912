// `sage`: the command-line program of sage-attention.
//
//   sage info        build, architectures, GPUs seen
//   sage accuracy    every method against exact attention, as a table
//   sage run         the main job: one attention call on the default problem
//   sage calibrate   a 4/8-bit plan from recorded attention inputs
//   sage record      synthetic recorded inputs for calibrate
//
// Exit status: 0 success, 1 the work failed (the library's status message
// is printed), 2 bad usage.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "commands.h"
#include "sage/version.h"

namespace {

using sage_cli::ArgParser;
using sage_cli::Command;

constexpr Command kCommands[] = {
    {"info", "build, CUDA architectures, runtime/driver versions, GPUs seen",
     "Shows the build (version, CUDA architectures), the CUDA runtime and driver, and the GPUs seen.",
     sage_cli::declare_info, sage_cli::run_info},
    {"accuracy", "every method against exact float64 attention, as a table",
     "Runs every method on random inputs of the chosen distribution(s) and prints their error against exact\n"
     "attention in float64 (on the same rounded inputs): cos-sim, relative L1, RMSE, worst-row cos-sim and\n"
     "max abs error. --device cpu runs the CPU emulation of the kernels through the public API.",
     sage_cli::declare_accuracy, sage_cli::run_accuracy},
    {"run", "the main job: one attention call on the default problem (GPU, else CPU)",
     "The main job: one attention call on the default problem (GPU: B=2, H=32, N=4096, D=128 bfloat16),\n"
     "on the GPU when one is present, else on the CPU reference at a small size (B=1, H=2, N=1024, D=128).\n"
     "Prints the problem, the time and the accuracy against exact attention in float64.",
     sage_cli::declare_run, sage_cli::run_run},
    {"calibrate", "a 4/8-bit Q K^T plan (JSON) from recorded attention inputs",
     "Measures the INT4 Q K^T path of every recorded attention call against exact attention and writes a\n"
     "plan that gives the worst fraction of (layer, timestep) keys INT8 and the rest INT4.",
     sage_cli::declare_calibrate, sage_cli::run_calibrate},
    {"record", "synthetic recorded attention inputs for 'sage calibrate'",
     "Writes random attention inputs in the recording format 'sage calibrate' reads, layer by layer\n"
     "(and timestep by timestep), some layers hostile to INT4 if --dist says so.",
     sage_cli::declare_record, sage_cli::run_record},
};

std::string main_usage() {
  std::string text = "usage: sage <command> [flags]\n\nsage-attention " SAGE_VERSION_STRING
                     ": quantized attention kernels (SageAttention2/3, SageBwd).\n\ncommands:\n";
  for (const Command& command : kCommands) {
    const std::string name = command.name;
    text += "  " + name + std::string(name.size() < 11 ? 12 - name.size() : 1, ' ') + command.brief + "\n";
  }
  text += "\nRun 'sage <command> --help' for the flags of a command.\n";
  return text;
}

const Command* find_command(const std::string& name) {
  for (const Command& command : kCommands) {
    if (name == command.name) return &command;
  }
  return nullptr;
}

// Flushes stdout (both C and C++ streams write to it); false, with a message
// on stderr, when the output was lost (a full disk, a closed pipe): a plan
// printed to stdout must not end in a successful exit if it never arrived.
bool stdout_written(const Command& command) {
  std::cout.flush();
  errno = 0;
  const bool flushed = std::fflush(stdout) == 0;
  const int error = errno;
  if (flushed && std::cout && !std::ferror(stdout)) return true;
  std::cerr << "sage " << command.name << ": error: cannot write standard output"
            << (!flushed && error != 0 ? std::string(": ") + std::strerror(error) : std::string()) << "\n";
  return false;
}

int run_command(const Command& command, const std::vector<std::string>& args) {
  ArgParser parser(command.name, command.summary);
  command.declare(parser);
  try {
    int rc = 0;
    if (parser.parse(args)) {
      rc = command.run(parser);
    } else {
      std::cout << parser.usage();
    }
    return stdout_written(command) ? rc : 1;
  } catch (const sage_cli::UsageError& e) {
    std::cerr << "sage " << command.name << ": error: " << e.what() << "\n\n" << parser.usage();
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "sage " << command.name << ": error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> words(argv + 1, argv + argc);
  if (words.empty()) {
    std::cerr << main_usage();
    return 2;
  }
  const std::string& first = words.front();
  if (first == "--help" || first == "-h" || first == "help") {
    // `sage help run` is `sage run --help`.
    if (first == "help" && words.size() > 1) {
      if (const Command* command = find_command(words[1])) return run_command(*command, {"--help"});
      std::cerr << "sage help: error: unknown command '" << words[1] << "'\n\n" << main_usage();
      return 2;
    }
    std::cout << main_usage();
    return 0;
  }
  if (first == "--version") {
    std::cout << "sage-attention " << SAGE_VERSION_STRING << "\n";
    return 0;
  }
  const Command* command = find_command(first);
  if (command == nullptr) {
    std::cerr << "sage: error: unknown command '" << first << "'\n\n" << main_usage();
    return 2;
  }
  return run_command(*command, std::vector<std::string>(words.begin() + 1, words.end()));
}
