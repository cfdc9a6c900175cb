# shardps_add_library(NAME ALIAS SOURCES a.cc ... [PUBLIC deps...] [PRIVATE deps...])
# One layer of the library: its headers under ./include (installed as <shardps/...>), compiled
# with the shared settings, C++20 for its users too.
function(shardps_add_library name alias)
  cmake_parse_arguments(L "" "" "SOURCES;PUBLIC;PRIVATE" ${ARGN})
  add_library(${name} ${L_SOURCES})
  add_library(shardps::${alias} ALIAS ${name})
  target_include_directories(${name} PUBLIC
    $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>
    $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
  target_link_libraries(${name} PUBLIC ${L_PUBLIC} PRIVATE ${L_PRIVATE} $<BUILD_INTERFACE:shardps_build_settings>)
  target_compile_features(${name} PUBLIC cxx_std_20)
  set_property(GLOBAL APPEND PROPERTY SHARDPS_LIBRARIES ${name})
endfunction()
