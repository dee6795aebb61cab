# Fetches the pinned llama.cpp source (vendor/llama.cpp of the llama-cpp-python sdist on
# PyPI) with pip, checks its sha256, extracts it into the build tree and applies our patch.
# A stamp holding the patch's hash makes a changed patch re-extract and re-apply.

function(mpq2_read_pin out_version out_sha256)
    file(STRINGS ${CMAKE_CURRENT_SOURCE_DIR}/ggml_ext/llama_cpp.pin lines REGEX "^[a-z0-9]+=")
    foreach(line ${lines})
        if(line MATCHES "^version=(.+)$")
            set(${out_version} ${CMAKE_MATCH_1} PARENT_SCOPE)
        elseif(line MATCHES "^sha256=(.+)$")
            set(${out_sha256} ${CMAKE_MATCH_1} PARENT_SCOPE)
        endif()
    endforeach()
endfunction()

function(mpq2_fetch_sdist version sha256 out_tarball)
    find_package(Python3 COMPONENTS Interpreter REQUIRED)
    set(tarball ${MPQ2_DOWNLOAD_CACHE}/llama_cpp_python-${version}.tar.gz)
    if(EXISTS ${tarball})
        file(SHA256 ${tarball} have)
        if(NOT have STREQUAL sha256)
            message(STATUS "mpq2: cached ${tarball} has the wrong sha256, fetching again")
            file(REMOVE ${tarball})
        endif()
    endif()
    if(NOT EXISTS ${tarball})
        message(STATUS "mpq2: fetching llama-cpp-python==${version} sdist with pip (once; cached in ${MPQ2_DOWNLOAD_CACHE})")
        file(MAKE_DIRECTORY ${MPQ2_DOWNLOAD_CACHE})
        execute_process(
            COMMAND ${Python3_EXECUTABLE} -m pip download --quiet --no-deps --no-binary :all:
                    llama-cpp-python==${version} -d ${MPQ2_DOWNLOAD_CACHE}
            RESULT_VARIABLE rc)
        if(NOT rc EQUAL 0 OR NOT EXISTS ${tarball})
            message(FATAL_ERROR "mpq2: pip could not download llama-cpp-python==${version}; "
                                "put its sdist at ${tarball} or pass -DMPQ2_LLAMA_CPP_DIR=<your llama.cpp checkout>")
        endif()
    endif()
    file(SHA256 ${tarball} have)
    if(NOT have STREQUAL sha256)
        message(FATAL_ERROR "mpq2: ${tarball} has sha256 ${have}, expected ${sha256} (ggml_ext/llama_cpp.pin)")
    endif()
    set(${out_tarball} ${tarball} PARENT_SCOPE)
endfunction()

function(mpq2_prepare_llama_cpp out_dir)
    mpq2_read_pin(version sha256)
    set(patch ${CMAKE_CURRENT_SOURCE_DIR}/ggml_ext/patches/llama.cpp-mpq2.patch)
    set(src ${CMAKE_BINARY_DIR}/llama.cpp-src)
    # a changed patch or pin re-runs this at the next build, not only at the next `cmake -B`
    set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS
                 ${patch} ${CMAKE_CURRENT_SOURCE_DIR}/ggml_ext/llama_cpp.pin)
    file(SHA256 ${patch} patch_hash)
    set(stamp_value "${patch_hash} ${MPQ2_LLAMA_CPP_DIR} ${version}")
    set(stamp ${src}/.mpq2-stamp)
    if(EXISTS ${stamp})
        file(READ ${stamp} have)
        if(have STREQUAL stamp_value)
            set(${out_dir} ${src} PARENT_SCOPE)
            return()
        endif()
    endif()

    file(REMOVE_RECURSE ${src} ${CMAKE_BINARY_DIR}/llama.cpp-extract)
    if(MPQ2_LLAMA_CPP_DIR)
        if(NOT EXISTS ${MPQ2_LLAMA_CPP_DIR}/ggml/include/ggml.h)
            message(FATAL_ERROR "mpq2: MPQ2_LLAMA_CPP_DIR=${MPQ2_LLAMA_CPP_DIR} is not a llama.cpp checkout (no ggml/include/ggml.h)")
        endif()
        message(STATUS "mpq2: copying ${MPQ2_LLAMA_CPP_DIR} into the build tree (once: use a new build "
                       "directory after changing that checkout)")
        file(COPY ${MPQ2_LLAMA_CPP_DIR}/ DESTINATION ${src} PATTERN ".git" EXCLUDE)
        set(origin "${MPQ2_LLAMA_CPP_DIR}")
    else()
        mpq2_fetch_sdist(${version} ${sha256} tarball)
        set(tmp ${CMAKE_BINARY_DIR}/llama.cpp-extract)
        # TOUCH: fresh timestamps, so objects built from an earlier extraction are rebuilt
        # (ccache keeps that cheap) instead of looking newer than changed sources
        file(ARCHIVE_EXTRACT INPUT ${tarball} DESTINATION ${tmp} TOUCH
             PATTERNS llama_cpp_python-${version}/vendor/llama.cpp)
        file(RENAME ${tmp}/llama_cpp_python-${version}/vendor/llama.cpp ${src})
        file(REMOVE_RECURSE ${tmp})
        set(origin "llama-cpp-python==${version}")
    endif()

    execute_process(COMMAND patch -p1 --forward --batch --dry-run --silent -i ${patch}
                    WORKING_DIRECTORY ${src} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
    if(NOT rc EQUAL 0)
        message(FATAL_ERROR "mpq2: ggml_ext/patches/llama.cpp-mpq2.patch does not apply to ${origin}.\n"
                            "It is made for llama.cpp as vendored in llama-cpp-python==${version} (ggml_ext/llama_cpp.pin).\n${out}")
    endif()
    execute_process(COMMAND patch -p1 --forward --batch --silent -i ${patch}
                    WORKING_DIRECTORY ${src} RESULT_VARIABLE rc)
    if(NOT rc EQUAL 0)
        message(FATAL_ERROR "mpq2: applying the patch failed in ${src}")
    endif()
    file(WRITE ${stamp} "${stamp_value}")
    message(STATUS "mpq2: llama.cpp from ${origin}, patched, in ${src}")
    set(${out_dir} ${src} PARENT_SCOPE)
endfunction()
