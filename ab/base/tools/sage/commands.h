// The `sage` subcommands. Each declares its flags on a parser and runs on
// the parsed values; main.cpp does the parsing, --help and usage errors.
#pragma once

#include "args.h"

namespace sage_cli {

struct Command {
  const char* name;
  const char* brief;    // one line for `sage --help`
  const char* summary;  // the paragraph of `sage <name> --help`
  void (*declare)(ArgParser& parser);
  int (*run)(const ArgParser& parser);  // exit status
};

void declare_info(ArgParser& parser);
int run_info(const ArgParser& parser);

void declare_accuracy(ArgParser& parser);
int run_accuracy(const ArgParser& parser);

void declare_run(ArgParser& parser);
int run_run(const ArgParser& parser);

void declare_calibrate(ArgParser& parser);
int run_calibrate(const ArgParser& parser);

void declare_record(ArgParser& parser);
int run_record(const ArgParser& parser);

}  // namespace sage_cli
