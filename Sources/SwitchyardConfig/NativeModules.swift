extension SwitchyardConfig {
    /// A native module served as an interface: its exported C functions become routed methods.
    ///
    /// ```yaml
    /// native:
    ///   Math:                                  # the interface routes name: Math.add, Math.*
    ///     library: ./libmath.so                # relative to this file
    ///     functions:
    ///       add: "i32(i32, i32)"
    ///       greet: { signature: "str(str)", free: greet_free }
    ///       hypot: { symbol: c_hypot, signature: "f64(f64, f64)" }
    /// ```
    public struct NativeModuleEntry: Sendable {
        /// The interface name (also the channel its calls travel on).
        public var interface: String
        /// The shared library, already resolved against the config file's directory.
        public var library: String
        /// Its functions, in file order.
        public var functions: [Function]
        /// Line of the entry.
        public var line: Int?
        /// Line of its `library`, for an error loading it.
        public var libraryLine: Int?

        /// One exported function.
        public struct Function: Sendable {
            /// The method name routes and callers use.
            public var name: String
            /// The exported symbol (default: the name).
            public var symbol: String
            /// The signature as written (checked by the runtime, which knows the type language).
            public var signature: String
            /// For a `str` result: the library's function that frees it.
            public var free: String?
            /// Its key path (`native.Math.functions.add`), for errors.
            public var key: String
            /// Its line in the file.
            public var line: Int?
        }
    }

    static func parseNative(_ node: ConfigNode, baseDirectory: String) throws(ConfigError) -> [NativeModuleEntry] {
        var modules: [NativeModuleEntry] = []
        for (interface, value) in try node.entries() {
            guard let first = interface.first, first.isLetter, interface.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else {
                throw ConfigError(key: value.path, line: value.line, message: "native module names are identifiers (letters, digits, '_'): routes name them as Interface.method")
            }
            var library: String?
            var libraryLine: Int?
            var functions: [NativeModuleEntry.Function] = []
            for (key, field) in try value.mapping(allowed: ["library", "functions"]) {
                switch key {
                case "library":
                    library = resolve(path: try field.string(), against: baseDirectory)
                    libraryLine = field.line
                case "functions":
                    for (name, function) in try field.entries() {
                        guard let first = name.first, first.isLetter || first == "_", name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else {
                            throw ConfigError(key: function.path, line: function.line, message: "function names are identifiers")
                        }
                        var entry = NativeModuleEntry.Function(name: name, symbol: name, signature: "", free: nil, key: function.path, line: function.line)
                        if let text = try? function.string(allowingEmpty: true) {
                            guard !text.isEmpty else {
                                throw ConfigError(key: function.path, line: function.line, message: "is an empty signature: write one, e.g. \"f64(i32, f64)\"")
                            }
                            entry.signature = text
                        } else {
                            for (functionKey, functionField) in try function.mapping(allowed: ["signature", "symbol", "free"]) {
                                switch functionKey {
                                case "signature": entry.signature = try functionField.string()
                                case "symbol": entry.symbol = try functionField.string()
                                case "free": entry.free = try functionField.string()
                                default: break
                                }
                            }
                            guard !entry.signature.isEmpty else {
                                throw ConfigError(key: function.path + ".signature", line: function.line, message: "is required, e.g. \"f64(i32, f64)\"")
                            }
                        }
                        functions.append(entry)
                    }
                default: break
                }
            }
            guard let library else { throw ConfigError(key: value.path + ".library", line: value.line, message: "is required (the shared library)") }
            guard !functions.isEmpty else { throw ConfigError(key: value.path + ".functions", line: value.line, message: "is required (name: signature)") }
            modules.append(NativeModuleEntry(interface: interface, library: library, functions: functions, line: value.line, libraryLine: libraryLine))
        }
        return modules
    }
}
