// Flag parsing shared by the `shardps` commands that use Boost.Program_options directly.
#pragma once

#include <boost/program_options.hpp>
#include <iostream>

namespace shardps::tools {

// Parses argv into `desc` (adding --help); --help prints it. Returns -1 to go on, else the exit
// code: 0 after --help, 2 for a flag error (printed with the usage as "shardps <name>: ...").
inline int ParseFlags(int argc, char** argv, boost::program_options::options_description& desc, const char* name) {
  namespace po = boost::program_options;
  desc.add_options()("help", "show this help");
  try {
    po::variables_map vm;
    po::store(po::parse_command_line(argc, argv, desc), vm);
    if (vm.count("help")) {
      std::cout << desc << std::endl;
      return 0;
    }
    po::notify(vm);
  } catch (const std::exception& e) {
    std::cerr << "shardps " << name << ": " << e.what() << "\n" << desc << std::endl;
    return 2;
  }
  return -1;
}

}  // namespace shardps::tools
