// The `flotilla` operator CLI: everything but the process boundary lives in flotilla::cli.

#include <iostream>

#include "flotilla/cli/cli.hpp"

int main(int argc, char** argv) { return flotilla::cli::run(argc, argv, std::cout, std::cerr); }
